"""``segdistill detect bench``: the student detector's baseline and its APD distillation over several seeds.

The recipe is a ``detect distill`` config (e.g. ``configs/synthetic/detection/apd.yaml``): the APD runs are
that recipe exactly; the baseline is ``student.yaml`` beside it (else the recipe trained without its
teacher), refused unless its data, model and schedule are the recipe's, as ``segdistill bench`` does for
segmentation. Runs go to ``<out>/<method>_seed<seed>``; a finished run written under the same config is
reused and an interrupted one resumed, so the command can be run again after a stop; a folder holding a
run finished under another config is refused. A reused APD run must have been distilled from the teacher
file the recipe names now (its ``teacher.sha256``). The teacher is COCO-evaluated once (``teacher.json``,
measured again when its file, the val data, its section or the device changes). Writes ``results.csv``
(every COCO figure of every run) and ``results.md``: box AP (and mask AP for Mask R-CNN), mean ± s.d. over
seeds, per seed, the gain over the baseline with its paired 95 % Student-t interval over seeds, the share
of the teacher-baseline gap closed, seconds per iteration.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import statistics
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ..bench import (
    Run,
    cached_teacher,
    check_not_stale,
    check_seeds,
    finished_result,
    interval_text,
    mean_sd,
    method_config,
    paired_difference,
    pct,
    record_divergence,
    seconds_per_iteration,
)
from ..config import config_to_dict
from ..engine.checkpoint import sha256
from ..engine.runtime import resolve_device
from ..errors import LossNotFinite, UserError
from .config import DetectionConfig, load_detection_config
from .evaluate import STATS, describe
from .run import run_detect_distill, run_detect_eval, run_detect_train

METHODS = ("baseline", "apd")
SHARED_SECTIONS = ("data", "model", "train")
KINDS = {"bbox": "box", "segm": "mask"}  # COCO iou type -> the table's word


def detection_runs(recipe: Path, seeds: list[int], out: Path, overrides: list[str]) -> list[Run]:
    """Baseline and APD for every seed (in that order). APD is the recipe itself; the baseline is
    ``student.yaml`` beside it (else the recipe), checked against the recipe's data, model and schedule,
    without a teacher or distill section (settings it does not use must not decide its reuse)."""
    runs = []
    for seed in seeds:
        baseline = method_config(recipe, "baseline", seed, out, overrides, DetectionConfig, SHARED_SECTIONS)
        baseline.config = dataclasses.replace(baseline.config, teacher=None, distill=None)
        own = [f"seed={seed}", f"name=apd_seed{seed}", f"out_dir={out}"]
        runs += [baseline, Run("apd", seed, load_detection_config(recipe, [*overrides, *own]), recipe)]
    return runs


def check_teacher_of(run: Run, digest: str) -> None:
    """A finished or interrupted APD run was distilled from the recipe's teacher file (same SHA-256)."""
    record = run.config.run_dir / "teacher.sha256"
    if run.method == "apd" and record.is_file() and record.read_text().strip() != digest:
        raise UserError(
            f"{run.config.run_dir} was distilled from another teacher file than {run.config.teacher.weights} "
            f"({record}); remove that run folder or bench into another --out"
        )


def evaluate_teacher(config: DetectionConfig, digest: str, out: Path, console: Console) -> dict:
    """The teacher's COCO metrics on the recipe's val split, cached in ``teacher.json`` with what they were
    measured on (the weights file's SHA-256, the val data, the teacher section, the device; measured again
    when any of them changes)."""
    assert config.teacher is not None and config.teacher.weights
    teacher_config = dataclasses.replace(config, model=config.teacher, teacher=None, distill=None)
    settings = config_to_dict(teacher_config)
    unread = ("workers", "flip_p", "train_ann", "train_images")  # what a val evaluation does not read
    data = {k: v for k, v in settings["data"].items() if k not in unread}
    key = {
        "sha256": digest,
        "data": data,
        "teacher": settings["model"],
        "device": str(resolve_device(config.train.device)),
    }

    def evaluate() -> dict:
        console.print(f"detect bench: evaluating the teacher {config.teacher.weights}")
        return run_detect_eval(teacher_config, config.teacher.weights, console=console)

    return cached_teacher(out / "teacher.json", config.teacher.weights, key, evaluate)


def metric_keys(results: dict[str, list[dict]]) -> list[str]:
    """The headline figures the finished runs hold: ``bbox_AP`` and, for Mask R-CNN, ``segm_AP``."""
    finished = [r for runs in results.values() for r in runs if "val" in r]
    return [f"{kind}_AP" for kind in KINDS if any(f"{kind}_AP" in r["val"] for r in finished)]


def summarise(results: dict[str, list[dict]], teacher: dict | None) -> dict[str, dict]:
    """Per method and headline figure (``bbox_AP``, ``segm_AP``): per-seed values (``None``: diverged),
    mean and s.d. over the finished seeds, and for APD the per-seed gain over the baseline (mean ± s.d.,
    the paired 95 % t interval, the share of the teacher-baseline gap closed); per method the median
    training seconds per iteration and its ratio to the baseline's."""
    base = results["baseline"]
    rows: dict[str, dict] = {}
    for method, runs in results.items():
        done = [r for r in runs if "val" in r]
        row: dict = {"s_per_it": seconds_per_iteration(done) if done else None}
        for key in metric_keys(results):
            cell: dict = {"per_seed": [r["val"][key] if "val" in r else None for r in runs], "mean": None}
            values = [v for v in cell["per_seed"] if v is not None]
            if values:
                cell["mean"], cell["sd"] = mean_sd(values)
            if method != "baseline":
                pairs = [(r["val"][key], b["val"][key]) for r, b in zip(runs, base) if "val" in r and "val" in b]
                if pairs:
                    cell["gain"], cell["gain_sd"] = mean_sd([m - b for m, b in pairs])
                    cell["vs_baseline"] = paired_difference([m for m, _ in pairs], [b for _, b in pairs])
                    base_mean = statistics.fmean(b for _, b in pairs)
                    teacher_value = teacher["val"].get(key) if teacher else None
                    if teacher_value is not None and teacher_value != base_mean:
                        cell["gap_closed"] = cell["gain"] / (teacher_value - base_mean)
            row[key] = cell
        rows[method] = row
    base_time = rows["baseline"]["s_per_it"]
    for row in rows.values():
        if base_time and row["s_per_it"] is not None:
            row["time_ratio"] = row["s_per_it"] / base_time
    return rows


def write_results(out: Path, rows: dict, results: dict, seeds: list[int], teacher: dict | None) -> str:
    """``results.csv`` (one row per run, every COCO figure) and ``results.md``; returns the markdown."""
    present = {k for runs in results.values() for r in runs if "val" in r for k in r["val"]}
    keys = [f"{kind}_{stat}" for kind in KINDS for stat in STATS if f"{kind}_{stat}" in present]
    with open(out / "results.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", "seed", "status", *keys, "train_seconds", "iters"])
        for method, runs in results.items():
            for seed, r in zip(seeds, runs):
                if "val" not in r:
                    status = f"diverged at step {r['diverged']['step']}"
                    writer.writerow([method, seed, status, *[""] * len(keys), "", ""])
                    continue
                values = [f"{r['val'][k]:.6f}" if k in r["val"] else "" for k in keys]
                writer.writerow([method, seed, "finished", *values, f"{r['val']['train_seconds']:.2f}", r["iters"]])
    headline = metric_keys(results)
    words = {key: f"{KINDS[key.split('_')[0]]} AP" for key in headline}
    teacher_text = ""
    if teacher:
        teacher_text = "; teacher " + ", ".join(f"{words[k]} {_figure(teacher['val'].get(k))}" for k in headline)
    lines = [
        f"seeds {seeds}; COCO AP (%) on val, mean ± s.d. over seeds; gain = mean ± s.d. of the per-seed gains over "
        f"the baseline; gap closed = gain / (teacher - baseline mean over the same seeds); s/it = training seconds "
        f"per iteration, median over seeds (final evaluation included); a run that stopped on a non-finite loss is "
        f"shown as diverged and left out of the statistics{teacher_text}",
        "",
        "| method | "
        + " | ".join(f"{words[k]} | per seed | gain | gap closed" for k in headline)
        + " | s/it | time vs baseline |",
        "|---|" + "---|---|---|---:|" * len(headline) + "---:|---:|",
    ]
    for method, row in rows.items():
        cells = []
        for key in headline:
            cell = row[key]
            mean = f"{pct(cell['mean'])} ± {pct(cell['sd'])}" if cell["mean"] is not None else "diverged"
            per_seed = " / ".join(
                pct(v) if v is not None else f"diverged (step {r['diverged']['step']})"
                for v, r in zip(cell["per_seed"], results[method])
            )
            gain = f"{pct(cell['gain'], True)} ± {pct(cell['gain_sd'])}" if "gain" in cell else "-"
            gap = f"{100 * cell['gap_closed']:.1f} %" if "gap_closed" in cell else "-"
            cells += [mean, per_seed, gain, gap]
        speed = f"{row['s_per_it']:.3f}" if row["s_per_it"] is not None else "-"
        ratio = f"x{row['time_ratio']:.2f}" if "time_ratio" in row else "-"
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {speed} | {ratio} |")
    if not headline:  # every run diverged: no figure to compare
        lines = lines[:2] + [f"every run stopped on a non-finite loss; see {out}/*/diverged.json"]
        text = "\n".join(lines) + "\n"
        (out / "results.md").write_text(text)
        return text
    lines += [
        "",
        "APD - baseline, paired per seed (AP points): mean and its two-sided 95 % Student-t interval over the "
        "seeds; **resolved** = the interval excludes 0, i.e. the seeds can tell the two apart: "
        + "; ".join(f"{words[k]} {interval_text(rows['apd'][k].get('vs_baseline'))}" for k in headline),
        "",
        "Every COCO figure (%), mean over the finished seeds:",
        "",
        "| figure | " + ("teacher | " if teacher else "") + " | ".join(rows) + " |",
        "|---|" + "---:|" * (len(rows) + (1 if teacher else 0)),
    ]
    for kind, word in KINDS.items():
        for stat in STATS:
            key = f"{kind}_{stat}"
            means = [_finished_mean(results[m], key) for m in rows]
            if all(v is None for v in means):
                continue
            cells = ([_figure(teacher["val"].get(key))] if teacher else []) + [_figure(v) for v in means]
            lines.append(f"| {word} {stat} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    (out / "results.md").write_text(text)
    return text


def _finished_mean(runs: list[dict], key: str) -> float | None:
    values = [r["val"][key] for r in runs if "val" in r and key in r["val"]]
    return statistics.fmean(values) if values else None


def _figure(value: float | None) -> str:
    """A COCO figure in percent; COCO's -1 (no ground truth in that size range) and a missing one as "-"."""
    return "-" if value is None or value < 0 else pct(value)


def _execute(run: Run) -> dict:
    done = finished_result(run)
    if done is not None:
        return done
    quiet = Console(stderr=True, quiet=True)
    job = run_detect_train if run.method == "baseline" else run_detect_distill
    return job(run.config, resume=True, console=quiet)


def run_detect_bench(
    recipe: str, seeds: list[int], out: str, overrides: list[str], console: Console | None = None
) -> dict:
    """Run (or reuse) baseline and APD for every seed, evaluate the teacher, write the results; returns
    ``{"rows", "markdown", "teacher"}``."""
    console = console or Console(stderr=True)
    if os.environ.get("WORLD_SIZE", "1") not in ("", "1"):
        raise UserError(
            "segdistill detect bench runs its runs one after another in one process: run it without torchrun"
        )
    recipe_path, out_dir = Path(recipe), Path(out)
    if not recipe_path.is_file():
        raise UserError(f"config file not found: {recipe_path}")
    base = load_detection_config(recipe_path, overrides)
    if base.teacher is None or not base.teacher.weights or base.distill is None:
        raise UserError(f"{recipe_path}: detect bench needs a detect distill recipe (teacher with weights, distill)")
    teacher_file = Path(base.teacher.weights)
    if not teacher_file.is_file():
        raise UserError(f"teacher weights not found: {teacher_file} (train the teacher first)")
    check_seeds(seeds)
    runs = detection_runs(recipe_path, seeds, out_dir, overrides)  # every config checked before any training
    digest = sha256(teacher_file)
    for run in runs:
        check_not_stale(run)
        check_teacher_of(run, digest)
    start = time.perf_counter()
    teacher = evaluate_teacher(base, digest, out_dir, console)
    results: dict[str, list[dict]] = {m: [] for m in METHODS}
    for i, run in enumerate(runs):
        reused = finished_result(run) is not None
        console.print(
            f"detect bench run {i + 1}/{len(runs)}: {run.config.name} ({run.source}){' reused' if reused else ''}"
        )
        try:
            result = _execute(run)
        except LossNotFinite as exc:
            result = record_divergence(run, exc)
            console.print(f"detect bench: {run.config.name} diverged ({exc}); recorded, going on")
        results[run.method].append(result)
        if "val" in result:
            console.print(f"  {run.config.name}: {describe(result['val'])} ({result['val']['train_seconds']:.0f} s)")
    rows = summarise(results, teacher)
    text = write_results(out_dir, rows, results, seeds, teacher)
    table = Table(title=f"detect bench: {recipe} (seeds {seeds})")
    headline = metric_keys(results)
    for column in ("method", *(f"{KINDS[k.split('_')[0]]} AP" for k in headline), "gain (box)", "s/it"):
        table.add_column(column, justify="left" if column == "method" else "right")
    table.add_row("teacher", *(pct(teacher["val"].get(k)) for k in headline), "-", "-")
    for method, row in rows.items():
        means = [
            f"{pct(row[k]['mean'])} ± {pct(row[k]['sd'])}" if row[k]["mean"] is not None else "diverged"
            for k in headline
        ]
        gain = interval_text(row["bbox_AP"].get("vs_baseline")).replace("**", "") if "bbox_AP" in row else "-"
        speed = f"{row['s_per_it']:.3f}" if row["s_per_it"] is not None else "-"
        table.add_row(method, *means, gain, speed)
    console.print(table)
    console.print(f"{len(runs)} runs in {time.perf_counter() - start:.0f} s; results in {out_dir / 'results.md'}")
    return {"rows": rows, "markdown": text, "teacher": teacher}
