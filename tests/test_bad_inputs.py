"""Rows of the README's bad-input table not covered next to their feature: each is one ``error: ...``
line on stderr, exit status 2, and no result presented as final."""

from __future__ import annotations

import errno
import json

import pytest
import torch

from segdistill.cli import main


def run(args: list[str], capsys) -> tuple[int, list[str]]:
    code = main(args)
    return code, capsys.readouterr().err.strip().splitlines()


def one_error_line(code: int, err: list[str], *needles: str) -> None:
    assert code == 2, err
    errors = [line for line in err if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0] == err[-1], err
    assert "Traceback" not in "\n".join(err)
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])


def test_output_directory_not_writable(tiny_overrides, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    code, err = run(
        ["train", "configs/synthetic/student.yaml", "name=run", *tiny_overrides, f"out_dir={blocker}"], capsys
    )
    one_error_line(code, err, f"output directory {blocker}/run is not writable")


def test_disk_full_while_saving_keeps_the_previous_checkpoint(tiny_overrides, tmp_path, capsys, monkeypatch):
    import segdistill.engine.checkpoint as checkpoint

    real_save = torch.save
    calls = {"n": 0}

    def save(obj, handle, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint: step 4
            handle.write(b"partial bytes")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", save)
    args = [
        "train",
        "configs/synthetic/student.yaml",
        "name=run",
        *tiny_overrides,
        "train.iters=6",
        "train.checkpoint_interval=2",
    ]
    code, err = run(args, capsys)
    last = tmp_path / "runs/run/checkpoints/last.pt"
    one_error_line(code, err, f"could not write {last} (disk full)", "the previous file is kept")
    monkeypatch.setattr(checkpoint.torch, "save", real_save)
    assert checkpoint.load_training_checkpoint(last)["step"] == 2  # intact, from before the failure
    assert not list(last.parent.glob("*.tmp")) and not (tmp_path / "runs/run/summary.json").exists()


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_pretrained_weights_cut_by_an_interrupted_download(tiny_overrides, tmp_path, capsys, suffix):
    import timm
    from safetensors.torch import save_file

    path = tmp_path / f"mobilenetv2{suffix}"
    state = timm.create_model("mobilenetv2_100").state_dict()
    save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    code, err = run(
        ["train", "configs/synthetic/student.yaml", "name=run", *tiny_overrides, f"model.pretrained={path}"], capsys
    )
    one_error_line(code, err, str(path), "corrupt or truncated", "interrupted download")


def test_class_score_tap_with_the_wrong_channel_count(tiny_overrides, tmp_path, capsys):
    assert main(["train", "configs/synthetic/student.yaml", "name=run", *tiny_overrides, "name=t"]) == 0
    teacher = [
        "teacher.backbone=mobilenetv2_100",
        "teacher.backbone_kwargs={}",
        "teacher.head_channels=16",
        "teacher.ppm_channels=8",
        f"teacher.weights={tmp_path / 'runs/t/checkpoints/last.pt'}",
        "distill.methods=[cwd]",
        "distill.teacher_taps={feat: head.dropout, logits: head.dropout}",
    ]
    capsys.readouterr()
    code, err = run(["distill", "configs/synthetic/kd.yaml", *tiny_overrides, *teacher], capsys)
    one_error_line(code, err, "cwd reads class scores from the teacher tap 'logits', which gives 16 channels")


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.batch_size=64", "the train split has 8 images, fewer than data.batch_size=64"),
        ("train.device=cuda", "no CUDA device is available") if not torch.cuda.is_available() else ("x=1", "x"),
        ("train.amp=fp16", "fp16 needs a CUDA device") if not torch.cuda.is_available() else ("x=1", "x"),
        (
            "train.nonfinite=ignore",
            "config key 'train.nonfinite': 'ignore' is not a valid choice; allowed: one of stop, skip",
        ),
        ("train.iters=ten", "config key 'train.iters': expected an integer"),
    ],
)
def test_run_settings_that_cannot_work(override, message, tiny_overrides, tmp_path, capsys):
    overrides = [o for o in tiny_overrides if not o.startswith(override.split("=")[0] + "=")]
    code, err = run(["train", "configs/synthetic/student.yaml", "name=run", *overrides, override], capsys)
    one_error_line(code, err, message)
    assert not (tmp_path / "runs/run/summary.json").exists()


def test_a_failed_rerun_does_not_leave_the_old_summary_as_final(tiny_overrides, tmp_path, capsys):
    assert main(["train", "configs/synthetic/student.yaml", "name=run", *tiny_overrides]) == 0
    summary = tmp_path / "runs/run/summary.json"
    assert json.loads(summary.read_text())["iters"] == 4
    # refused when the config is read: no work starts, the earlier run's files stay as they were
    code, err = run(
        ["train", "configs/synthetic/student.yaml", "name=run", *tiny_overrides, "train.nonfinite=x"], capsys
    )
    assert code == 2 and json.loads(summary.read_text())["iters"] == 4
    # refused once the run has started (the loaders): the old summary is no longer the run's result
    code, err = run(
        ["train", "configs/synthetic/student.yaml", "name=run", *tiny_overrides, "data.batch_size=64"], capsys
    )
    assert code == 2
    assert not summary.exists()
