"""Shared fixtures: a tiny generated street-scene dataset and tiny configs."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """8 train and 4 val scenes at 64 x 128 in the Cityscapes layout."""
    from segdistill.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("synthetic")
    generate_dataset(root, train=8, val=4, seed=0, height=64, width=128, workers=1)
    return root


@pytest.fixture
def tiny_overrides(tiny_data, tmp_path) -> list[str]:
    """Overrides that turn any synthetic recipe into a seconds-long run on ``tiny_data``."""
    return [
        f"data.root={tiny_data}",
        f"out_dir={tmp_path / 'runs'}",
        "data.crop_size=[64,64]",
        "data.batch_size=4",
        "model.backbone=mobilenetv2_100",
        "model.backbone_kwargs={}",
        "model.head_channels=16",
        "model.ppm_channels=8",
        "train.iters=4",
        "train.log_interval=2",
        "train.amp=none",
        "train.channels_last=false",
        "eval.batch_size=4",
    ]


@pytest.fixture
def assert_leaves_global_rng() -> Callable[[Iterable], None]:
    """A check that iterating ``loader`` to its end leaves torch's global RNG where it was."""

    def check(loader: Iterable) -> None:
        torch.manual_seed(0)
        expected = torch.rand(3)
        torch.manual_seed(0)
        for _ in loader:
            pass
        assert torch.equal(torch.rand(3), expected)

    return check
