"""TensorBoard logging (``train.tensorboard``, on when the package is installed): every logged term, the
learning rate, images/s, each evaluation's metrics and per-class IoU as scalars at their steps, and a
prediction panel per evaluation, written by the run into ``<run_dir>/tensorboard``."""

from __future__ import annotations

import json

import pytest

from segdistill.cli import main

pytest.importorskip("tensorboard")


def read_events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events


def test_a_distillation_logs_every_term_metric_and_a_panel(tiny_overrides, tmp_path):
    args = [*tiny_overrides, "train.iters=4", "train.log_interval=2", "train.eval_interval=2", "name=apd"]
    assert main(["distill", "configs/synthetic/apd.yaml", *args]) == 0
    run = tmp_path / "runs" / "apd"
    events = read_events(run / "tensorboard")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    terms = {k for r in records if "loss" in r for k in r if k != "step"}
    assert {"apd_kl", "apd_align", "apd_teacher_ce", "kd", "ce", "aux_ce", "loss", "lr", "images_per_s"} <= terms
    scalars = set(events.Tags()["scalars"])
    assert {f"train/{k}" for k in terms} <= scalars
    assert {"val/mIoU", "val/pixel_acc", "val/mean_acc", "val_iou/road"} <= scalars
    logged = {r["step"]: r["loss"] for r in records if "loss" in r}
    assert {e.step: pytest.approx(e.value) for e in events.Scalars("train/loss")} == logged
    evals = {r["step"]: r["eval"]["mIoU"] for r in records if "eval" in r}
    assert {e.step: pytest.approx(e.value) for e in events.Scalars("val/mIoU")} == evals == {2: evals[2], 4: evals[4]}
    panels = events.Images("val/predictions")
    # 3 val images of 64 x 128, one row each: image | labels | prediction
    assert [p.step for p in panels] == [2, 4] and (panels[0].height, panels[0].width) == (3 * 64, 3 * 128)


def test_off_or_not_installed_writes_nothing_and_a_fresh_run_starts_afresh(tiny_overrides, tmp_path, monkeypatch):
    run = tmp_path / "runs" / "student"
    args = ["train", "configs/synthetic/student.yaml", *tiny_overrides, "name=student"]
    assert main([*args, "train.tensorboard=false"]) == 0
    assert not (run / "tensorboard").exists()
    from segdistill.engine import trainer

    monkeypatch.setattr(trainer, "tensorboard_installed", lambda: False)
    assert main(args) == 0
    assert not (run / "tensorboard").exists()
    monkeypatch.undo()
    assert main(args) == 0
    first = sorted((run / "tensorboard").iterdir())
    assert main(args) == 0  # not resumed: the old curves go, one event file stays
    second = sorted((run / "tensorboard").iterdir())
    assert len(first) == len(second) == 1 and first != second


def test_logging_changes_nothing_that_is_trained(tiny_overrides, tmp_path):
    """The panels run the model between steps (evaluation every 2 steps): the same numbers with and
    without TensorBoard, to the last digit."""
    common = [*tiny_overrides, "train.iters=4", "train.log_interval=1", "train.eval_interval=2"]

    def records(name: str, on: bool) -> list[dict]:
        assert main(["distill", "configs/synthetic/apd.yaml", *common, f"name={name}", f"train.tensorboard={on}"]) == 0
        lines = (tmp_path / "runs" / name / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(x).items() if k != "images_per_s"} for x in lines]

    with_panels = records("logged", True)
    assert (tmp_path / "runs" / "logged" / "tensorboard").is_dir()
    assert with_panels == records("unlogged", False)
