"""MasKD's two stages end to end: ``segdistill maskd-tokens`` learns the receptive tokens on the frozen
teacher (a run of its own: checkpoints, resume), ``distill`` reads them; missing tokens are one line naming
the command; ``bench`` runs the token stage itself when the tokens are missing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from segdistill.cli import main

TOKENS = ["data.crop_size=[64,64]", "data.batch_size=4", "train.iters=6", "train.log_interval=2", "eval.batch_size=4"]


def _common(tiny_data, tmp_path) -> list[str]:
    return [f"data.root={tiny_data}", f"out_dir={tmp_path / 'runs'}"]


def test_tokens_stage_learns_saves_resumes_and_feeds_stage_two(tiny_data, tmp_path, capsys):
    common = _common(tiny_data, tmp_path)
    assert main(["maskd-tokens", "configs/synthetic/maskd_tokens.yaml", *common, *TOKENS]) == 0
    run = tmp_path / "runs" / "synthetic_maskd_tokens"
    checkpoint = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert set(checkpoint["model"]) == {"tokens.mask_token"}  # the tokens only, never the teacher
    assert checkpoint["model"]["tokens.mask_token"].shape == (8, 19)
    assert checkpoint["optimizer"]["state"]  # SGD momentum: a resumed stage continues where it stopped
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in logged if "loss" in r]
    assert len(losses) == 3 and losses[-1] < losses[0]  # the tokens learn
    assert {"maskd_task", "maskd_dice"} <= set(logged[0]) and "eval" in logged[-1]
    tokens = checkpoint["model"]["tokens.mask_token"]
    # resuming the finished stage trains nothing more
    assert main(["maskd-tokens", "configs/synthetic/maskd_tokens.yaml", *common, *TOKENS, "--resume"]) == 0
    again = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]["tokens.mask_token"]
    assert torch.equal(tokens, again)
    # stage 2 reads them, frozen
    stage2 = [*common, *TOKENS[:2], "train.iters=2", "train.log_interval=1", "eval.batch_size=4"]
    tokens_file = f"distill.options.maskd.tokens={run / 'checkpoints' / 'last.pt'}"
    assert main(["distill", "configs/synthetic/maskd.yaml", *stage2, tokens_file]) == 0
    student_run = torch.load(tmp_path / "runs" / "synthetic_maskd" / "checkpoints" / "last.pt", weights_only=True)
    assert torch.equal(student_run["task"]["maskd.tokens.mask_token"], tokens)


def test_missing_tokens_name_the_command(tiny_data, tmp_path, capsys):
    common = _common(tiny_data, tmp_path)
    missing = f"distill.options.maskd.tokens={tmp_path / 'none.pt'}"
    assert main(["distill", "configs/synthetic/maskd.yaml", *common, *TOKENS, missing]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "none.pt" in err[0] and "segdistill maskd-tokens" in err[0]


@pytest.mark.slow
def test_bench_learns_the_tokens_first(tiny_data, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the recipe's tokens path (runs/synthetic_maskd_tokens/...) is relative
    out = tmp_path / "bench"
    overrides = [f"data.root={tiny_data}", *TOKENS[:2], "train.iters=2", "train.log_interval=1", "eval.batch_size=4"]
    from segdistill.bench import run_bench

    recipe = str(Path(__file__).resolve().parents[1] / "configs/synthetic/apd.yaml")
    result = run_bench(recipe, ["maskd"], [0], str(out), overrides, figures=False)
    assert (tmp_path / "runs" / "synthetic_maskd_tokens" / "checkpoints" / "last.pt").is_file()
    assert "maskd" in result["rows"]


def test_stage_two_refuses_unfinished_or_foreign_tokens(tiny_data, tmp_path, capsys):
    """Tokens from a stage stopped before the end of its schedule, or learned on another teacher section, are
    refused in one line naming the file (they would distil through half-learned or wrong masks)."""
    common = _common(tiny_data, tmp_path)
    assert main(["maskd-tokens", "configs/synthetic/maskd_tokens.yaml", *common, *TOKENS]) == 0
    last = tmp_path / "runs" / "synthetic_maskd_tokens" / "checkpoints" / "last.pt"
    stage2 = [*common, *TOKENS[:2], "train.iters=1", "eval.batch_size=4", f"distill.options.maskd.tokens={last}"]
    state = torch.load(last, weights_only=True)
    state["step"] = 3  # as if the stage had stopped at step 3 of 6
    torch.save(state, last)
    capsys.readouterr()
    assert main(["distill", "configs/synthetic/maskd.yaml", *stage2]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(last) in err[0] and "step 3 of 6" in err[0] and "--resume" in err[0]
    state["step"] = 6
    torch.save(state, last)
    assert main(["distill", "configs/synthetic/maskd.yaml", *stage2, "teacher.ppm_channels=32"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another teacher" in err[0] and "teacher.ppm_channels: 64 there, 32 here" in err[0]


def test_token_stage_refuses_to_write_into_another_run(tiny_data, tmp_path, capsys):
    """``maskd-tokens`` on the distillation recipe would write its tokens into the distillation's own run
    folder, not where ``distill.options.maskd.tokens`` points: refused before any work."""
    assert main(["maskd-tokens", "configs/synthetic/maskd.yaml", *_common(tiny_data, tmp_path), *TOKENS]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "synthetic_maskd_tokens" in err[0] and "maskd_tokens.yaml" in err[0]
    assert not (tmp_path / "runs" / "synthetic_maskd").exists()


def test_masked_teacher_moves_with_the_module():
    """``.to()`` / ``.double()`` reach the frozen teacher that the stage's module holds outside its tree."""
    from segdistill.distill import MaskedTeacher
    from segdistill.models import build_segmentor

    teacher = build_segmentor("pspnet", "mobilenetv2_100", 19, head_channels=16, ppm_channels=8)
    module = MaskedTeacher(teacher, {"logits": "head.classifier"}, "logits", 19, 8).double()
    assert all(p.dtype == torch.float64 for p in teacher.parameters())
    out = module(torch.zeros(1, 3, 32, 32, dtype=torch.float64))["out"]
    assert out.dtype == torch.float64 and out.shape == (1, 19, 32, 32)
    assert set(module.state_dict()) == {"tokens.mask_token"}


@pytest.mark.slow
def test_token_stage_on_two_processes(tiny_data, tmp_path):
    """The stage under 2 gloo processes (DDP wraps the masked teacher): it trains, the tokens stay the
    checkpoint's only state, and both ranks finish."""
    from test_distributed import launch

    args = ["maskd-tokens", "configs/synthetic/maskd_tokens.yaml", *_common(tiny_data, tmp_path), *TOKENS]
    procs = launch(2, [*args, "data.batch_size=2"])
    for p in procs:
        p.wait(timeout=300)
    errors = [p.stderr.read() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    run = tmp_path / "runs" / "synthetic_maskd_tokens"
    checkpoint = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert set(checkpoint["model"]) == {"tokens.mask_token"} and checkpoint["step"] == 6
    assert json.loads((run / "summary.json").read_text())["val"]["mIoU"] > 0
