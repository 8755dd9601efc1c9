"""``segdistill bench``: a resumable methods x seeds grid under one recipe, with its results files."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from segdistill.cli import main


def tiny_teacher(tiny_overrides, tmp_path) -> list[str]:
    assert main(["train", "configs/synthetic/student.yaml", *tiny_overrides, "name=t", "model.head_channels=24"]) == 0
    return [
        "teacher.backbone=mobilenetv2_100",
        "teacher.backbone_kwargs={}",
        "teacher.head_channels=24",
        "teacher.ppm_channels=8",
        f"teacher.weights={tmp_path / 'runs/t/checkpoints/last.pt'}",
    ]


def test_bench_grid_results_and_reuse(tiny_overrides, tmp_path, capsys):
    teacher = tiny_teacher(tiny_overrides, tmp_path)
    out = tmp_path / "bench"
    args = ["bench", "configs/synthetic/apd.yaml", *tiny_overrides, *teacher]
    args += ["--methods", "apd", "kd", "baseline", "--seeds", "0", "1", "--out", str(out)]
    assert main(args) == 0
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [(r["method"], r["seed"]) for r in rows] == [
        ("baseline", "0"),
        ("baseline", "1"),
        ("apd", "0"),
        ("apd", "1"),
        ("kd", "0"),
        ("kd", "1"),
    ]
    assert all(0.0 <= float(r["mIoU"]) <= 1.0 and "road" in r for r in rows)
    text = (out / "results.md").read_text()
    assert "gap closed" in text and "| apd |" in text and "Per-class IoU" in text and (out / "teacher.json").exists()
    for method in ("apd", "kd"):  # every method but the baseline gets its share of the gap (APD had none)
        row = next(line for line in text.splitlines() if line.startswith(f"| {method} |"))
        assert row.split("|")[5].strip().endswith("%"), row
    assert "Paired per-seed differences" in text and "| kd |" in text.split("Paired per-seed")[1]
    for figure in ("curves", "per_class", "predictions", "tsne"):
        assert (out / f"{figure}.png").stat().st_size > 1000, figure
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/summary.json")}
    capsys.readouterr()
    assert main(args) == 0  # everything reused
    assert capsys.readouterr().err.count("reused") == 6
    assert stamps == {p: p.stat().st_mtime_ns for p in out.glob("*/summary.json")}
    # keys that change nothing trained (data.cache, workers, intervals) still reuse the runs ...
    harmless = ["data.cache=true", "train.log_interval=1", "train.tensorboard=false"]
    grid = ["--methods", "apd", "kd", "baseline", "--seeds", "0", "1", "--out", str(out)]
    assert main(["bench", "configs/synthetic/apd.yaml", *tiny_overrides, *teacher, *harmless, *grid]) == 0
    assert capsys.readouterr().err.count("reused") == 6
    # ... but another copy of the data does not: refused before anything runs (resuming the finished run
    # would only score its old weights on the new data), naming the folder and the key
    copy = tmp_path / "data_copy"
    shutil.copytree(next(o.split("=", 1)[1] for o in tiny_overrides if o.startswith("data.root=")), copy)
    moved = [*tiny_overrides, *teacher, f"data.root={copy}"]
    grid = ["--methods", "baseline", "--seeds", "0", "--out", str(out)]
    assert main(["bench", "configs/synthetic/apd.yaml", *moved, *grid]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "baseline_seed0 holds a run finished under another config (data.root:" in err[0], err
    assert stamps == {p: p.stat().st_mtime_ns for p in out.glob("*/summary.json")}
    assert main(["bench", "configs/synthetic/apd.yaml", *moved, *grid[:-1], str(tmp_path / "elsewhere")]) == 0
    capsys.readouterr()
    assert main(["bench", "configs/synthetic/apd.yaml", *tiny_overrides, "--seeds", "1", "1", "--out", str(out)]) == 2
    assert "--seeds: seed 1 is given twice" in capsys.readouterr().err
    # the teacher file retrained in place: its distilled runs are not reused beside a re-measured teacher
    key = json.loads((out / "teacher.json").read_text())["key"]
    assert key["amp"] == "none" and key["device"] == "cpu" and len(key["sha256"]) == 64
    weights = tmp_path / "runs/t/checkpoints/last.pt"
    weights.write_bytes(weights.read_bytes() + b"retrained")
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the teacher file changed since" in err[0] and "was distilled from the old one" in err[0]


def test_teacher_digest_reads_the_file_behind_a_zoo_spec(tmp_path):
    from segdistill.bench import teacher_digest
    from segdistill.engine.checkpoint import sha256

    file = tmp_path / "pspnet.pth"
    file.write_bytes(b"weights")
    assert teacher_digest(f"mmseg:{file}") == teacher_digest(str(file)) == sha256(file)
    assert teacher_digest("shipped:synthetic_teacher") is None and teacher_digest(str(tmp_path / "none.pt")) is None


def test_bench_refuses_a_method_recipe_with_another_schedule(tiny_overrides, tmp_path, capsys):
    recipes = tmp_path / "recipes"
    shutil.copytree("configs/synthetic", recipes)
    with open(recipes / "kd.yaml", "a") as handle:
        handle.write("train:\n  lr: 0.05\n")
    code = main(["bench", str(recipes / "apd.yaml"), *tiny_overrides, "--methods", "kd", "--seeds", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "kd.yaml differs from" in err[-1] and "train.lr (0.05 vs 0.02)" in err[-1]


def test_paired_differences_with_a_t_interval():
    """mean ± t_{0.975, n-1} sd / sqrt(n) of the per-seed differences; resolved iff the interval excludes 0."""
    from segdistill.bench import paired_difference

    wide = paired_difference([0.41, 0.43, 0.42], [0.40, 0.40, 0.40])  # differences 0.01, 0.03, 0.02: sd 0.01
    half = 4.303 * 0.01 / 3**0.5
    assert wide["mean"] == pytest.approx(0.02) and wide["n"] == 3
    assert (wide["low"], wide["high"]) == (pytest.approx(0.02 - half), pytest.approx(0.02 + half))
    assert not wide["resolved"]  # 0.02 ± 0.0248 contains 0
    tight = paired_difference([0.42, 0.421, 0.419], [0.40, 0.40, 0.40])  # 0.02 ± 0.0025
    assert tight["resolved"] and tight["low"] > 0
    worse = paired_difference([0.30, 0.31], [0.40, 0.40])  # -0.095 ± 12.706 x 0.00707 / sqrt(2) = ± 0.0635
    assert worse["resolved"] and worse["high"] < 0
    assert paired_difference([0.5], [0.4]) is None  # one seed: no interval


def test_seconds_per_iteration_is_the_median_over_seeds():
    """One run slowed by other load (here 10x) does not move a method's s/it or its time ratio."""
    from segdistill.bench import summarise

    def run(miou: float, seconds: float) -> dict:
        return {"val": {"mIoU": miou, "train_seconds": seconds, "iou": [miou]}, "iters": 100}

    results = {
        "baseline": [run(0.40, 10.0), run(0.41, 12.0), run(0.42, 11.0)],
        "kd": [run(0.42, 200.0), run(0.43, 20.0), run(0.44, 22.0)],
    }
    rows = summarise(results, [0, 1, 2], None, ["road"])
    assert rows["baseline"]["s_per_it"] == pytest.approx(0.11)
    assert rows["kd"]["s_per_it"] == pytest.approx(0.22)
    assert rows["kd"]["time_ratio"] == pytest.approx(2.0)


def test_a_run_that_diverges_is_recorded_and_the_bench_goes_on(tiny_overrides, tmp_path, capsys):
    """A method whose loss is not finite stops its own run, not the comparison: the run is recorded as
    diverged (``diverged.json`` with the step), shown so in results.md / results.csv, left out of the
    statistics, and reused as such by the next bench."""
    teacher = tiny_teacher(tiny_overrides, tmp_path)
    out = tmp_path / "bench"
    args = ["bench", "configs/synthetic/apd.yaml", *tiny_overrides, *teacher, "distill.weights={kd: 1.0e+39}"]
    args += ["--methods", "baseline", "kd", "--seeds", "0", "--out", str(out), "--no-figures"]
    assert main(args) == 0
    record = json.loads((out / "kd_seed0" / "diverged.json").read_text())
    assert record["diverged"]["step"] == 1 and "kd" in record["diverged"]["terms"]
    rows = {r["method"]: r for r in csv.DictReader(open(out / "results.csv"))}
    assert rows["kd"]["status"] == "diverged at step 1" and rows["kd"]["mIoU"] == ""
    assert rows["baseline"]["status"] == "finished" and 0.0 <= float(rows["baseline"]["mIoU"]) <= 1.0
    line = next(x for x in (out / "results.md").read_text().splitlines() if x.startswith("| kd |"))
    assert "| diverged | diverged (step 1) |" in line
    capsys.readouterr()
    assert main(args) == 0  # the diverged run is reused as diverged, not retrained
    assert capsys.readouterr().err.count("reused") == 2


def test_bench_refuses_maskd_without_its_tokens_upfront_and_leaves_it_out_of_the_default(
    tiny_overrides, tmp_path, capsys, monkeypatch
):
    """A recipe folder with no MasKD token stage (ADE20K, PASCAL-Context, a user's folder): ``--methods maskd``
    is refused before any run; the default method list leaves maskd out and says why."""
    from segdistill import bench

    recipes = tmp_path / "recipes"
    shutil.copytree("configs/synthetic", recipes)
    (recipes / "maskd_tokens.yaml").unlink()
    monkeypatch.chdir(tmp_path)  # the recipe's tokens path is relative: no tokens learned here
    args = ["bench", str(recipes / "apd.yaml"), *tiny_overrides, "--seeds", "0", "--out", str(tmp_path / "b")]
    assert main([*args, "--methods", "baseline", "maskd"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "maskd_tokens.yaml" in err[0] and "segdistill maskd-tokens" in err[0]
    assert not (tmp_path / "b").exists()

    class Planned(Exception):
        pass

    def stop(run, console):  # the first run to execute: the plan is what this test checks
        raise Planned(run.method)

    monkeypatch.setattr(bench, "_execute", stop)
    monkeypatch.setattr(bench, "evaluate_teacher", lambda *a: None)
    with pytest.raises(Planned):
        bench.run_bench(str(recipes / "apd.yaml"), None, [0, 1], str(tmp_path / "b"), tiny_overrides)
    err = capsys.readouterr().err
    runs = 2 * (len(bench.DEFAULT_METHODS) - 1)  # every default method but maskd, 2 seeds
    assert "maskd left out" in err and f"bench run 1/{runs}: baseline_seed0" in err
