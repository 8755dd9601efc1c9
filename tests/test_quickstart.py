"""The quickstart end to end on tiny data (the shipped teacher, tiny students, a few iterations)."""

import json

from segdistill.cli import main


def test_quickstart_writes_report_table_and_figure(tiny_data, tiny_overrides, tmp_path, capsys):
    out = tmp_path / "quick"
    students = [o for o in tiny_overrides if not o.startswith(("data.root", "out_dir"))]
    code = main(
        [
            "quickstart",
            "--out",
            str(out),
            "--data",
            str(tiny_data),
            *students,
            "distill.options.apd.adapter_channels=16",
        ]
    )
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results) >= {"teacher", "baseline", "apd", "wall_seconds"}
    assert results["baseline"]["iters"] == results["apd"]["iters"] == 4
    assert results["dataset"] == {"seed": 0, "height": 64, "width": 128, "train": 8, "val": 4, "style": "default"}
    for run in ("baseline", "apd"):
        assert results[run]["parameters"] > 0 and results[run]["train_seconds"] > 0
        assert 0.0 <= results[run]["val"]["mIoU"] <= 1.0 and len(results[run]["val"]["iou"]) == 19
    report = (out / "report.md").read_text()
    assert "| APD student |" in report and "predictions.png" in report
    assert "| class | teacher | baseline | APD | change |" in report and "| road |" in report
    assert "8 train / 4 val scenes at 64x128" in report
    err = capsys.readouterr().err
    assert "non-default dataset" in err and "per-class IoU" in err
    assert (out / "predictions.png").stat().st_size > 1000


def test_quickstart_schedule_is_its_own_and_overrides_win(tmp_path):
    from segdistill.quickstart import QUICKSTART_ITERS, quickstart_configs

    student, apd = quickstart_configs(str(tmp_path), "data/synthetic", 0, [])
    assert student.train.iters == apd.train.iters == QUICKSTART_ITERS == 500
    student, apd = quickstart_configs(str(tmp_path), "data/synthetic", 0, [], iters=1000)
    assert student.train.iters == apd.train.iters == 1000  # the recipes' schedule, as bench runs it
    student, apd = quickstart_configs(str(tmp_path), "data/synthetic", 0, ["train.iters=7"], iters=1000)
    assert student.train.iters == apd.train.iters == 7


def test_quickstart_refuses_a_non_positive_schedule(capsys):
    assert main(["quickstart", "--iters", "0"]) != 0
    err = capsys.readouterr().err
    assert "--iters must be a positive number of iterations, got 0" in err
