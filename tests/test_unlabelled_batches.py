"""A batch without a labelled pixel contributes zero loss (issue 17, second bug): before, torch's mean
cross-entropy over no pixel was 0/0 and the run stopped with "loss is not finite". On one process and
on two gloo processes (where one rank's batch may be empty while the other's is not)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_distributed import launch, overrides

from segdistill.base.step import segmentation_losses
from segdistill.cli import main


def unlabelled_copy(tiny_data: Path, tmp_path: Path) -> Path:
    """The tiny dataset with 6 of its 8 training images all "unlabeled" (labelId 0 -> ignore): most
    batches of 2 have no labelled pixel, some have one labelled image."""
    root = tmp_path / "mostly_unlabelled"
    shutil.copytree(tiny_data, root)
    for i, path in enumerate(sorted((root / "gtFine" / "train").rglob("*_labelIds.png"))):
        if i < 6:
            size = Image.open(path).size
            Image.fromarray(np.zeros(size[::-1], dtype=np.uint8)).save(path)
    return root


def test_cross_entropy_of_an_unlabelled_batch_is_zero_with_zero_gradient():
    logits = torch.randn(2, 19, 8, 8, requires_grad=True)
    terms = segmentation_losses({"out": logits, "aux": logits * 2}, torch.full((2, 32, 32), 255), 0.4)
    assert all(v.item() == 0.0 for v in terms.values())
    sum(terms.values()).backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def _finite_losses(run: Path) -> list[float]:
    """Every logged total finite; returns the logged cross-entropies (one step per log line)."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses and all(np.isfinite(losses))
    return [r["ce"] for r in records if "loss" in r]


def test_unlabelled_batches_train_on_one_process(tiny_overrides, tiny_data, tmp_path):
    root = unlabelled_copy(tiny_data, tmp_path)
    args = overrides(tiny_overrides, data__root=root, data__batch_size=2, train__iters=6, train__log_interval=1)
    assert main(["distill", "configs/synthetic/apd.yaml", *args, "name=one"]) == 0
    ce = _finite_losses(tmp_path / "runs" / "one")
    assert 0.0 in ce and any(value > 0.1 for value in ce)  # batches without and with labelled pixels


@pytest.mark.slow
def test_unlabelled_batches_train_on_two_processes(tiny_overrides, tiny_data, tmp_path):
    root = unlabelled_copy(tiny_data, tmp_path)
    args = overrides(tiny_overrides, data__root=root, data__batch_size=2, train__iters=6, train__log_interval=1)
    procs = launch(2, ["distill", "configs/synthetic/apd.yaml", *args, "name=two"])
    for p in procs:
        p.wait(timeout=300)
    assert [p.returncode for p in procs] == [0, 0], [p.stderr.read() for p in procs]
    _finite_losses(tmp_path / "runs" / "two")


@pytest.mark.slow
def test_apd_scope_global_with_an_empty_rank_trains_on_two_processes(tiny_overrides, tiny_data, tmp_path):
    """Issue 17, first bug: with ``scope: global`` a rank whose batch has no labelled pixel skipped the
    teacher adapter's backward, whose all-reduce the other rank ran: gloo "collective mismatch"."""
    root = unlabelled_copy(tiny_data, tmp_path)
    args = overrides(tiny_overrides, data__root=root, data__batch_size=2, train__iters=6, train__log_interval=1)
    extra = ["distill.options.apd.scope=global", "distill.options.apd.pool_size=null", "train.dist_timeout=60"]
    procs = launch(2, ["distill", "configs/synthetic/apd.yaml", *args, *extra, "name=global"])
    for p in procs:
        p.wait(timeout=300)
    assert [p.returncode for p in procs] == [0, 0], [p.stderr.read()[-2000:] for p in procs]
    _finite_losses(tmp_path / "runs" / "global")
