"""Evaluation results do not depend on the evaluation batch size, for every protocol, and images of
different sizes are evaluated one at a time instead of failing to batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from segdistill.data.datasets import build_dataset
from segdistill.engine.evaluator import collate_eval, evaluate
from segdistill.models import build_segmentor

PROTOCOLS = {
    "whole": {"mode": "whole"},
    "slide": {"mode": "slide", "window": (48, 48), "stride": (32, 32)},
    "multi-scale + flip": {"mode": "whole", "scales": (0.75, 1.0, 1.25), "flip": True},
}


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    net = build_segmentor("pspnet", "mobilenetv2_100", 19, head_channels=16, ppm_channels=8)
    for m in net.modules():  # non-trivial BatchNorm statistics, so that eval mode matters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return net


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_metrics_identical_across_batch_sizes(tiny_data, protocol):
    data = build_dataset("cityscapes", tiny_data, "val")
    net = model()
    results = []
    for batch_size in (1, 3, 4):
        loader = DataLoader(data, batch_size=batch_size, collate_fn=collate_eval)
        results.append(evaluate(net, loader, 19, **PROTOCOLS[protocol]))
    for other in results[1:]:
        assert other["mIoU"] == results[0]["mIoU"] and other["iou"] == results[0]["iou"]


def test_images_of_different_sizes_are_evaluated_one_at_a_time(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(40, 56), (48, 40), (40, 56)]):
        for folder, array in (("images", rng.integers(0, 255, (h, w, 3), dtype=np.uint8)), ("annotations", None)):
            path = root / folder / "validation" / f"ADE_val_{i:08d}.{'jpg' if folder == 'images' else 'png'}"
            path.parent.mkdir(parents=True, exist_ok=True)
            if array is None:
                array = rng.integers(0, 151, (h, w), dtype=np.uint8)
            Image.fromarray(array).save(path)
    data = build_dataset("ade20k", tmp_path, "val")
    torch.manual_seed(0)
    net = build_segmentor("pspnet", "mobilenetv2_100", 150, head_channels=16, ppm_channels=8)
    one = evaluate(net, DataLoader(data, batch_size=1, collate_fn=collate_eval), 150)
    three = evaluate(net, DataLoader(data, batch_size=3, collate_fn=collate_eval), 150)
    assert one["mIoU"] == three["mIoU"] and one["iou"] == three["iou"]
