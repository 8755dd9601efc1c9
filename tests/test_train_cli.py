"""End to end through the CLI: train, evaluate, export, distill; user errors exit 2 with one line."""

import json

import pytest
import torch

from segdistill.cli import build_parser, main
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
    assert (
        main(
            [
                "eval",
                "configs/synthetic/student.yaml",
                *tiny_overrides,
                "--checkpoint",
                str(ckpt),
                "--json",
                str(out),
            ]
        )
        == 0
    )
    whole = json.loads(out.read_text())
    train_metrics = json.loads((tmp_path / "runs/e/summary.json").read_text())["val"]
    assert whole["mIoU"] == pytest.approx(train_metrics["mIoU"])
    assert (
        main(
            [
                "eval",
                "configs/synthetic/student.yaml",
                *tiny_overrides,
                "--checkpoint",
                str(ckpt),
                "--mode",
                "slide",
                "--scales",
                "0.75",
                "1.0",
                "--flip",
            ]
        )
        == 0
    )
    st = tmp_path / "w.safetensors"
    assert main(["export", str(ckpt), "--safetensors", str(st), "--half"]) == 0
    assert (
        main(
            [
                "eval",
                "configs/synthetic/student.yaml",
                *tiny_overrides,
                "--checkpoint",
                str(st),
                "--json",
                str(out),
            ]
        )
        == 0
    )
    assert json.loads(out.read_text())["mIoU"] == pytest.approx(whole["mIoU"], abs=0.02)  # fp16 weights


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "missing.yaml"], "config file not found: missing.yaml"),
        (["train", "configs/synthetic/student.yaml", "train.iter=3"], "did you mean 'train.iters'"),
        (
            ["train", "configs/synthetic/student.yaml", "data.dataset=cityscapes", "data.root=/nonexistent"],
            "/nonexistent",
        ),
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
    code = main(
        [
            "eval",
            "configs/synthetic/student.yaml",
            *tiny_overrides,
            "model.head_channels=24",  # another width
            "--checkpoint",
            str(ckpt),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "do not fit this model" in err
    code = main(["eval", "configs/synthetic/student.yaml", *tiny_overrides, "model.num_classes=7", "--checkpoint", "x"])
    err = capsys.readouterr().err
    assert code == 2 and "model.num_classes is 7 but data.dataset=synthetic has 19 classes" in err


def tiny_teacher(tiny_overrides, tmp_path):
    """A tiny trained teacher checkpoint and the overrides that make apd.yaml use it."""
    assert (
        main(["train", "configs/synthetic/student.yaml", *tiny_overrides, "name=teacher", "model.head_channels=24"])
        == 0
    )
    ckpt = tmp_path / "runs/teacher/checkpoints/last.pt"
    return [
        "teacher.backbone=mobilenetv2_100",
        "teacher.backbone_kwargs={}",
        "teacher.head_channels=24",
        "teacher.ppm_channels=8",
        f"teacher.weights={ckpt}",
        "distill.options.apd.adapter_channels=16",
    ]


def test_distill_apd_end_to_end(tiny_overrides, tmp_path):
    teacher = tiny_teacher(tiny_overrides, tmp_path)
    assert main(["distill", "configs/synthetic/apd.yaml", *tiny_overrides, *teacher, "name=apd"]) == 0
    lines = [json.loads(x) for x in (tmp_path / "runs/apd/metrics.jsonl").read_text().splitlines()]
    logged = lines[0]
    assert {"ce", "aux_ce", "kd", "apd_kl", "apd_align"} <= set(logged)
    assert all(torch.isfinite(torch.tensor(logged[k])) for k in ("kd", "apd_kl", "apd_align"))
    state = torch.load(tmp_path / "runs/apd/checkpoints/last.pt", weights_only=True)
    assert any(k.startswith("apd.teacher_adapter") for k in state["task"])  # adapters are checkpointed
    assert "apd_teacher_ce" in state["extra_optimizers"]
    assert not any(k.startswith("teacher.") for k in state["model"])  # the teacher is not saved


def test_distill_config_errors(tiny_overrides, tmp_path, capsys):
    teacher = tiny_teacher(tiny_overrides, tmp_path)
    capsys.readouterr()
    cases = [
        (["distill.methods=[apd, fitnett]"], "unknown distillation method 'fitnett' (did you mean 'fitnet'?)"),
        (["distill.options.apd.scop=image"], "did you mean 'distill.options.apd.scope'"),
        (["teacher.num_classes=7"], "teacher.num_classes (7) != model.num_classes (19)"),
        (["teacher.weights=null"], "teacher.weights is not set"),
        (["distill.student_taps={feat: head.botleneck, logits: head.classifier}"], "closest: head.bottleneck"),
    ]
    for extra, message in cases:
        code = main(["distill", "configs/synthetic/apd.yaml", *tiny_overrides, *teacher, *extra, "name=bad"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and message in err[0], (extra, err)


def test_teacher_with_another_class_count_is_refused(tiny_overrides, tmp_path, capsys):
    """A teacher checkpoint trained for 7 classes, given to a 19-class distillation."""
    from segdistill.models import build_segmentor

    teacher = build_segmentor("pspnet", "mobilenetv2_100", 7, head_channels=24, ppm_channels=8)
    path = tmp_path / "teacher7.pt"
    torch.save({"model": teacher.state_dict()}, path)
    overrides = [
        "teacher.backbone=mobilenetv2_100",
        "teacher.backbone_kwargs={}",
        "teacher.head_channels=24",
        "teacher.ppm_channels=8",
        f"teacher.weights={path}",
        "distill.options.apd.adapter_channels=16",
    ]
    code = main(["distill", "configs/synthetic/apd.yaml", *tiny_overrides, *overrides, "name=k7"])
    err = capsys.readouterr().err
    assert code == 2 and f"weights in {path} do not fit this model" in err and "(7," in err


def test_bad_file_read_in_a_dataloader_worker_is_named(tiny_overrides, tiny_data, tmp_path, capsys):
    """torch re-raises a worker's exception under 'Caught ... in DataLoader worker'; the one line
    shown must still be the original message naming the file."""
    import shutil

    root = tmp_path / "data"
    shutil.copytree(tiny_data, root)
    bad = sorted((root / "leftImg8bit" / "train").rglob("*_leftImg8bit.png"))[0]
    bad.write_bytes(b"not a png")
    overrides = [o for o in tiny_overrides if not o.startswith("data.root")]
    code = main(["train", "configs/synthetic/student.yaml", *overrides, f"data.root={root}", "data.workers=1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("error: ") and str(bad) in err[0] and "Caught" not in err[0], err


def test_overrides_may_follow_list_options(capsys):
    """``--seeds 0 1 key=value``: the override is an override, not a seed (argparse alone reads it as one)."""
    parser = build_parser()
    args, extra = parser.parse_known_args("bench cfg a=1 --seeds 0 1 b=2 --methods kd apd c=3 --out o d=4".split())
    assert (args.seeds, args.methods, args.out) == ([0, 1], ["kd", "apd"], "o")
    assert [*args.overrides, *args.trailing_overrides, *extra] == ["a=1", "b=2", "c=3", "d=4"]
    args, _ = parser.parse_known_args("detect bench cfg --seeds 3 train.iters=2".split())
    assert (args.seeds, args.overrides, args.trailing_overrides) == ([3], [], ["train.iters=2"])
    assert parser.parse_known_args(["bench", "cfg"])[0].seeds == [0, 1, 2]
    for argv, message in (
        ("bench cfg --seeds 0 x", "argument --seeds: invalid int value: 'x'"),
        ("bench cfg --methods kd nope", "argument --methods: invalid choice: 'nope'"),
        ("bench cfg --seeds a=1", "argument --seeds: expected at least one argument"),
    ):
        with pytest.raises(SystemExit) as exc:
            main(argv.split())
        assert exc.value.code == 2
        assert message in capsys.readouterr().err
