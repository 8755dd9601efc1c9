"""End to end through the CLI: train, evaluate, export, distill; user errors exit 2 with one line."""

import json

import pytest
import torch

from segdistill.cli import main
from segdistill.config import load_config
from segdistill.engine.run import run_train


def test_train_writes_everything_and_is_deterministic(tiny_overrides, tmp_path, capsys):
    assert main(["train", "configs/synthetic/student.yaml", *tiny_overrides, "name=a"]) == 0
    run = tmp_path / "runs" / "a"
    assert {p.name for p in run.iterdir()} >= {"config.yaml", "metrics.jsonl", "checkpoints", "summary.json"}
    assert (run / "checkpoints" / "last.pt").is_file() and (run / "checkpoints" / "best.pt").is_file()
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "loss" in r] == [2, 4]
    assert "eval" in lines[-1] and 0.0 <= lines[-1]["eval"]["mIoU"] <= 1.0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["parameters"] > 0 and summary["flops"] > 0
    # resolved config reloads to the same run
    again = load_config(run / "config.yaml", ["name=b"])
    second = run_train(again)
    a = torch.load(run / "checkpoints/last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "runs/b/checkpoints/last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a), "same seed and config must give identical weights on CPU"
    assert second["val"]["mIoU"] == summary["val"]["mIoU"]


def test_eval_protocols_and_export(tiny_overrides, tmp_path, capsys):
    assert main(["train", "configs/synthetic/student.yaml", *tiny_overrides, "name=e"]) == 0
    ckpt = tmp_path / "runs/e/checkpoints/last.pt"
    out = tmp_path / "whole.json"
    assert main(["eval", "configs/synthetic/student.yaml", *tiny_overrides, "--checkpoint", str(ckpt),
                 "--json", str(out)]) == 0
    whole = json.loads(out.read_text())
    train_metrics = json.loads((tmp_path / "runs/e/summary.json").read_text())["val"]
    assert whole["mIoU"] == pytest.approx(train_metrics["mIoU"])
    assert main(["eval", "configs/synthetic/student.yaml", *tiny_overrides, "--checkpoint", str(ckpt),
                 "--mode", "slide", "--scales", "0.75", "1.0", "--flip"]) == 0
    st = tmp_path / "w.safetensors"
    assert main(["export", str(ckpt), "--safetensors", str(st), "--half"]) == 0
    assert main(["eval", "configs/synthetic/student.yaml", *tiny_overrides, "--checkpoint", str(st),
                 "--json", str(out)]) == 0
    assert json.loads(out.read_text())["mIoU"] == pytest.approx(whole["mIoU"], abs=0.02)  # fp16 weights


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "missing.yaml"], "config file not found: missing.yaml"),
        (["train", "configs/synthetic/student.yaml", "train.iter=3"], "did you mean 'train.iters'"),
        (["train", "configs/synthetic/student.yaml", "data.dataset=cityscapes", "data.root=/nonexistent"],
         "/nonexistent"),
        (["eval", "configs/synthetic/student.yaml", "--checkpoint", "/nonexistent.pt"], "not found"),
        (["train", "configs/synthetic/student.yaml", "model.backbone=resnet18x"], "unknown backbone"),
    ],
)
def test_user_errors_exit_2_with_one_line(args, message, tiny_overrides, capsys):
    overrides = [o for o in tiny_overrides if not any(o.startswith(a.split("=")[0] + "=") for a in args[2:])]
    code = main(args + (overrides if args[1] != "missing.yaml" else []))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_checkpoint_from_another_model_is_refused(tiny_overrides, tmp_path, capsys):
    assert main(["train", "configs/synthetic/student.yaml", *tiny_overrides, "name=m"]) == 0
    ckpt = tmp_path / "runs/m/checkpoints/last.pt"
    code = main(["eval", "configs/synthetic/student.yaml", *tiny_overrides, "model.num_classes=7",
                 "--checkpoint", str(ckpt)])
    err = capsys.readouterr().err
    assert code == 2 and "do not fit this model" in err
