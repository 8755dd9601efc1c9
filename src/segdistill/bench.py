"""``segdistill bench``: methods side by side under one recipe over several seeds.

Every run uses the same teacher, student, data, schedule and evaluation as the recipe given: a
method's own recipe next to it (``<dir>/<method>.yaml``, which carries the method's reference
settings for that setup) is used only if those sections are identical, otherwise the run is refused
naming the first difference; a method without its own recipe runs the given recipe with
``distill.methods=[method]``. ``baseline`` is plain training of the same student.

Resumable: a run whose ``summary.json`` exists and whose saved config equals the one it would run is
reused; an interrupted run resumes from its last checkpoint; a folder holding a run finished under
another config (another ``data.root``, say) is refused before anything runs. Writes ``results.csv`` (one row per run,
per-class IoU included), ``results.md`` and ``teacher.json`` into the output folder.
"""

from __future__ import annotations

import csv
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from torch import nn

from .base.method_options import BENCH_METHODS, method_options
from .config import Config, config_to_dict, load_config, with_current_defaults
from .data.datasets import class_names
from .engine.builders import build_datasets, build_model, is_zoo_spec, write_summary
from .engine.checkpoint import load_checkpoint, sha256
from .engine.run import (
    evaluate_model,
    evaluation_loader,
    has_trained_weights,
    run_distill,
    run_maskd_tokens,
    run_train,
)
from .engine.runtime import resolve_device
from .engine.trainer import RESUMABLE_CHANGES, config_changes
from .errors import LossNotFinite, UserError
from .models.sources import default_taps
from .report import bench_figures
from .report.figures import prediction_panel

DEFAULT_METHODS = list(BENCH_METHODS)  # the baseline, then every method of METHOD_OPTIONS
SHARED_SECTIONS = ("data", "model", "train", "eval")  # + teacher for distillations


@dataclass
class Run:
    method: str
    seed: int
    config: Config
    source: Path


def method_config(
    recipe: Path,
    method: str,
    seed: int,
    out: Path,
    overrides: list[str],
    schema: type = Config,
    shared: tuple[str, ...] = SHARED_SECTIONS,
) -> Run:
    """The config of one run, checked against ``recipe`` for identical teacher/student/data/schedule (the
    ``shared`` sections of a ``schema`` config, plus ``teacher`` for a distillation)."""
    own = [f"seed={seed}", f"name={method}_seed{seed}", f"out_dir={out}"]
    base = load_config(recipe, [*overrides, *own], schema=schema)
    sibling = recipe.parent / f"{'student' if method == 'baseline' else method}.yaml"
    if sibling.is_file():
        config, source = load_config(sibling, [*overrides, *own], schema=schema), sibling
    elif method == "baseline":
        config, source = base, recipe
    else:
        extra = [f"distill.methods=[{method}]", "distill.options={}", "distill.weights={}"]
        config, source = load_config(recipe, [*overrides, *extra, *own], schema=schema), recipe
    a, b = config_to_dict(base), config_to_dict(config)
    sections = shared + (() if method == "baseline" else ("teacher",))
    for section in sections:
        for key in sorted(set(a[section] or {}) | set(b[section] or {})):
            left, right = (a[section] or {}).get(key), (b[section] or {}).get(key)
            if left != right:
                raise UserError(
                    f"{source} differs from {recipe} in {section}.{key} ({right!r} vs {left!r}); "
                    "a fair comparison needs the same teacher, student, data, schedule and evaluation"
                )
    return Run(method, seed, config, source)


def maskd_tokens_problem(run: Run) -> str | None:
    """Why the bench cannot give this MasKD run its receptive tokens (``None`` when it can): the run's
    ``distill.options.maskd.tokens`` must exist or be the output of ``maskd_tokens.yaml`` beside its recipe
    (the bench then runs that token stage first)."""
    assert run.config.distill is not None
    tokens = method_options("maskd", run.config.distill.options.get("maskd")).tokens
    recipe = run.source.parent / "maskd_tokens.yaml"
    if tokens and (Path(tokens).is_file() or recipe.is_file()):
        return None
    where = f"{tokens} does not exist" if tokens else "distill.options.maskd.tokens is not set"
    return (
        f"MasKD distils through receptive tokens learned first on the teacher: {where} and {recipe} (the token "
        f"stage's recipe) does not either; learn them with `segdistill maskd-tokens CONFIG` and set "
        f"distill.options.maskd.tokens, or leave maskd out of --methods"
    )


# Keys in which a finished run may differ from the bench's and still be reused: what a resume may change,
# except the data's location (a bench over another copy of the data must not reuse these runs) and the
# device (another device computes other numbers). Loading settings (workers, cache) change only the
# timing; results.md's s/it then mixes them, as it mixes machine loads.
REUSABLE_CHANGES = RESUMABLE_CHANGES - {"data.root", "train.device"}


def _finished_record(run: Run) -> tuple[Path, list[str]] | None:
    """The run folder's ``summary.json`` or ``diverged.json`` (a finished run) and the config keys in which
    the run that wrote it differs from ``run`` (up to :data:`REUSABLE_CHANGES`); ``None`` when the folder
    holds no finished run."""
    saved = run.config.run_dir / "config.yaml"
    for name in ("summary.json", "diverged.json"):
        path = run.config.run_dir / name
        if path.is_file() and saved.is_file():
            stored = with_current_defaults(yaml.safe_load(saved.read_text()), type(run.config))
            return path, config_changes(stored, config_to_dict(run.config), REUSABLE_CHANGES)
    return None


def finished_result(run: Run) -> dict | None:
    """The run's ``summary.json``, or its ``diverged.json`` record (``{"diverged": {...}}``), when the run
    folder holds one written under this config, up to the keys that change nothing trained (those a
    resume may change: log and eval intervals, workers, ``data.cache``, TensorBoard, ...); else ``None``
    (the run is started or resumed)."""
    record = _finished_record(run)
    if record is None or record[1]:
        return None
    return json.loads(record[0].read_text())


def check_not_stale(run: Run) -> None:
    """Refuse a run folder that holds a run finished under another config (e.g. another ``data.root``):
    resuming it would only evaluate the old weights again, and reusing it would report them as this
    bench's run."""
    record = _finished_record(run)
    if record is not None and record[1]:
        raise UserError(
            f"{run.config.run_dir} holds a run finished under another config ({'; '.join(record[1][:3])}); "
            "bench into another --out, or remove that folder to train it again"
        )


def check_seeds(seeds: list[int]) -> None:
    """Each seed once: a repeated seed would pair a run with itself (s.d. 0, every gain "resolved")."""
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise UserError(f"--seeds: seed {repeated[0]} is given twice; each seed is one independent run")


def record_divergence(run: Run, exc: LossNotFinite) -> dict:
    """Record a run that stopped on a non-finite loss (``diverged.json`` beside its ``config.yaml``, written
    through a temporary file), so the comparison goes on and a later bench reuses the outcome."""
    record = {"diverged": {"step": exc.step, "terms": exc.terms, "message": str(exc)}}
    write_summary(run.config.run_dir / "diverged.json", record)
    return record


def maskd_token_stage(run: Run, overrides: list[str]) -> Run | None:
    """The token stage a MasKD run needs: ``maskd_tokens.yaml`` beside its recipe with the bench's ``data.``,
    ``teacher.`` and ``train.iters`` overrides; ``None`` without that recipe."""
    recipe = run.source.parent / "maskd_tokens.yaml"
    if not recipe.is_file():
        return None
    shared = [o for o in overrides if o.split("=", 1)[0].startswith(("data.", "teacher.", "train.iters"))]
    config = load_config(recipe, shared)
    return Run("maskd-tokens", config.seed, config, recipe)


def ensure_maskd_tokens(run: Run, overrides: list[str], console: Console) -> None:
    """MasKD distils through receptive tokens learned first on the teacher: when ``maskd_tokens.yaml`` beside
    the method's recipe exists, its token stage is brought to its end first (resumed; nothing is run when its
    folder holds a finished stage under the same config), with the bench's ``data.``, ``teacher.`` and
    ``train.iters`` overrides (the rest of its schedule stays), and must write the tokens the run reads.
    Without that recipe, the run's own ``distill.options.maskd.tokens`` file is used (checked by the builder)."""
    assert run.config.distill is not None
    tokens = method_options("maskd", run.config.distill.options.get("maskd")).tokens
    stage = maskd_token_stage(run, overrides)
    if stage is None:
        return
    config, recipe = stage.config, stage.source
    if tokens and Path(tokens).resolve() != (config.run_dir / "checkpoints" / "last.pt").resolve():
        raise UserError(
            f"{recipe} writes its tokens to {config.run_dir / 'checkpoints' / 'last.pt'}, not to "
            f"distill.options.maskd.tokens={tokens}"
        )
    if finished_result(stage) is None:
        console.print(f"bench: learning MasKD's receptive tokens first ({recipe} -> {config.run_dir})")
        run_maskd_tokens(config, resume=True, console=console)


def _execute(run: Run, console: Console) -> dict:
    done = finished_result(run)
    if done is not None:
        return done
    if run.method == "baseline":
        return run_train(run.config, resume=True, console=console)
    return run_distill(run.config, resume=True, console=console)


def teacher_digest(weights: str | None) -> str | None:
    """SHA-256 of the file behind a teacher's ``weights`` (a path, or a zoo spec ``mmseg:<path>`` ...);
    ``None`` for ``shipped:`` weights (checksum-verified by name), library weights and a missing file."""
    if not weights or weights.startswith("shipped:"):
        return None
    path = Path(weights.split(":", 1)[1] if is_zoo_spec(weights) else weights)
    return sha256(path) if path.is_file() else None


def check_teacher_unchanged(path: Path, digest: str | None, runs: list[Run]) -> None:
    """Refuse to reuse or resume distillations in a bench folder whose ``teacher.json`` was measured on
    another teacher file (same path, other contents): its finished runs were distilled from that one."""
    if digest is None or not path.is_file():
        return
    measured = (json.loads(path.read_text()).get("key") or {}).get("sha256")
    if measured is None or measured == digest:
        return
    for run in runs:
        started = (run.config.run_dir / "checkpoints" / "last.pt").is_file() or finished_result(run) is not None
        if run.method != "baseline" and started:
            raise UserError(
                f"the teacher file changed since {path} was measured, and {run.config.run_dir} was distilled from "
                "the old one; bench into another --out, or remove the distilled runs' folders"
            )


def cached_teacher(path: Path, weights: str | None, key: dict, evaluate: Callable[[], dict]) -> dict:
    """The teacher's record in ``path`` (``teacher.json``: ``weights``, ``key``, ``val``) when it was
    measured under ``key`` (the weights file's SHA-256 and every setting the evaluation reads); else
    ``evaluate()`` (the metrics), recorded with ``key`` through a temporary file."""
    key = json.loads(json.dumps(key))  # as it reads back (tuples become lists)
    if path.is_file():
        cached = json.loads(path.read_text())
        if cached.get("key") == key:
            return cached
    record = {"weights": weights, "key": key, "val": evaluate()}
    write_summary(path, record)
    return record


def evaluate_teacher(config: Config, out: Path, console: Console) -> dict:
    """The teacher's val metrics under the recipe's evaluation protocol (cached in ``teacher.json``, measured
    again when the weights file, the data, the evaluation settings, the teacher section or the device change)."""
    assert config.teacher is not None
    weights = config.teacher.weights or config.teacher.pretrained or config.teacher.kwargs.get("weights")
    settings = config_to_dict(config)
    data = {k: v for k, v in settings["data"].items() if k not in ("workers", "cache")}
    key = {
        "sha256": teacher_digest(config.teacher.weights),
        "data": data,
        "eval": settings["eval"],
        "teacher": settings["teacher"],
        "device": str(resolve_device(config.train.device)),
        "amp": config.train.amp,  # the evaluation runs under the training's autocast
    }

    def evaluate() -> dict:
        teacher = build_model(config.teacher, key="teacher")
        return evaluate_model(config, teacher, evaluation_loader(config, console=console))

    return cached_teacher(out / "teacher.json", weights, key, evaluate)


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


# Student's t quantile t_{0.975, df} for df = 1..30 (two-sided 95 %); above 30, the normal 1.96.
T_975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
    2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def paired_difference(a: list[float], b: list[float]) -> dict | None:
    """The per-seed differences ``a_i - b_i`` (runs paired by seed): mean, and its two-sided 95 % Student-t
    interval ``mean ± t_{0.975, n-1} sd / sqrt(n)``; ``resolved`` when the interval excludes 0 (the seeds
    can tell the two apart). ``None`` with fewer than 2 seeds (no interval)."""
    diffs = [x - y for x, y in zip(a, b)]
    n = len(diffs)
    if n < 2:
        return None
    mean, sd = mean_sd(diffs)
    half = (T_975[n - 2] if n - 1 <= len(T_975) else 1.96) * sd / n**0.5
    low, high = mean - half, mean + half
    return {"mean": mean, "low": low, "high": high, "n": n, "resolved": low > 0 or high < 0}


def _miou(result: dict) -> float | None:
    """A run's val mIoU; ``None`` for a run that diverged."""
    return result["val"]["mIoU"] if "val" in result else None


def seconds_per_iteration(runs: list[dict]) -> float:
    """Median over the finished runs of training seconds per iteration: a run slowed by other load on the
    machine (or paused) moves the median of three seeds less than the mean."""
    return statistics.median(r["val"]["train_seconds"] / r["iters"] for r in runs)


def summarise(results: dict[str, list[dict]], seeds: list[int], teacher_miou: float | None, names: list[str]) -> dict:
    """Per method: mIoU mean/sd, per-seed values, gain over the baseline (mean ± sd of per-seed
    gains), share of the teacher-student gap closed, per-class mean IoU, seconds per iteration.

    A run that diverged (``{"diverged": {"step": ...}}``) is listed in ``row["diverged"]`` (seed -> step) and
    left out of every statistic: the means are over the seeds that finished, the gains and paired
    differences over the seeds where both runs finished; a method with no finished seed has no mIoU."""
    rows = {}
    base = results.get("baseline")
    base_done = [r for r in base if "val" in r] if base else []
    base_mean = statistics.fmean(r["val"]["mIoU"] for r in base_done) if base_done else None
    base_time = seconds_per_iteration(base_done) if base_done else None
    for method, runs in results.items():
        done = [r for r in runs if "val" in r]
        row: dict = {"per_seed": [_miou(r) for r in runs], "mIoU": None, "sd": None, "s_per_it": None}
        row["diverged"] = {seed: r["diverged"]["step"] for seed, r in zip(seeds, runs) if "diverged" in r}
        row["per_class"] = [None] * len(names)
        rows[method] = row
        if not done:
            continue
        row["mIoU"], row["sd"] = mean_sd([r["val"]["mIoU"] for r in done])
        if base_done and method != "baseline":
            pairs = [(_miou(r), _miou(b)) for r, b in zip(runs, base) if "val" in r and "val" in b]
            if pairs:
                row["gain"], row["gain_sd"] = mean_sd([m - b for m, b in pairs])
                row["vs_baseline"] = paired_difference([m for m, _ in pairs], [b for _, b in pairs])
        if "apd" in results and method not in ("apd", "baseline"):
            pairs = [(_miou(r), _miou(a)) for r, a in zip(runs, results["apd"]) if "val" in r and "val" in a]
            row["vs_apd"] = paired_difference([m for m, _ in pairs], [a for _, a in pairs])
        if method != "baseline" and teacher_miou is not None and base_mean is not None and teacher_miou != base_mean:
            row["gap_closed"] = (row["mIoU"] - base_mean) / (teacher_miou - base_mean)
        per_class = []
        for c in range(len(names)):
            values = [r["val"]["iou"][c] for r in done if r["val"]["iou"][c] is not None]
            per_class.append(statistics.fmean(values) if values else None)
        row["per_class"] = per_class
        row["s_per_it"] = seconds_per_iteration(done)
        if base_time:
            row["time_ratio"] = row["s_per_it"] / base_time
    return rows


def pct(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "-"
    return f"{100 * x:+.2f}" if signed else f"{100 * x:.2f}"


def interval_text(diff: dict | None) -> str:
    if diff is None:
        return "-"
    text = f"{pct(diff['mean'], True)} [{pct(diff['low'], True)}, {pct(diff['high'], True)}]"
    return f"**{text} resolved**" if diff["resolved"] else text


def write_results(
    out: Path, rows: dict, results: dict, seeds: list[int], teacher: dict | None, names: list[str]
) -> str:
    """``results.csv`` (one row per run) and ``results.md``; returns the markdown."""
    with open(out / "results.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", "seed", "status", "mIoU", "pixel_acc", "train_seconds", "iters", *names])
        for method, runs in results.items():
            for seed, r in zip(seeds, runs):
                if "val" not in r:  # diverged: no metrics, the step it stopped at in the status column
                    writer.writerow([method, seed, f"diverged at step {r['diverged']['step']}", "", "", "", "",
                                     *[""] * len(names)])  # fmt: skip
                    continue
                iou = ["" if v is None else f"{v:.6f}" for v in r["val"]["iou"]]
                writer.writerow([method, seed, "finished", f"{r['val']['mIoU']:.6f}", f"{r['val']['pixel_acc']:.6f}",
                                 f"{r['val']['train_seconds']:.2f}", r["iters"], *iou])  # fmt: skip
    teacher_miou = teacher["val"]["mIoU"] if teacher else None
    lines = [
        f"seeds {seeds}; val mIoU (%), mean ± s.d. over seeds; gain = mean ± s.d. of the per-seed gains over "
        f"the baseline; gap closed = gain / (teacher - baseline); s/it = training seconds per iteration, median "
        f"over seeds (final evaluation included); a run that stopped on a non-finite loss is shown as diverged and "
        f"left out of the statistics" + (f"; teacher {pct(teacher_miou)}" if teacher else ""),
        "",
        "| method | mIoU | per seed | gain | gap closed | s/it | time vs baseline |",
        "|---|---|---|---|---:|---:|---:|",
    ]
    for method, row in rows.items():
        gain = f"{pct(row['gain'], True)} ± {pct(row['gain_sd'])}" if "gain" in row else "-"
        gap = f"{100 * row['gap_closed']:.1f} %" if "gap_closed" in row else "-"
        ratio = f"x{row['time_ratio']:.2f}" if "time_ratio" in row else "-"
        seeds_text = " / ".join(
            pct(v) if v is not None else f"diverged (step {row['diverged'][seed]})"
            for seed, v in zip(seeds, row["per_seed"])
        )
        miou = f"{pct(row['mIoU'])} ± {pct(row['sd'])}" if row["mIoU"] is not None else "diverged"
        speed = f"{row['s_per_it']:.3f}" if row["s_per_it"] is not None else "-"
        lines.append(f"| {method} | {miou} | {seeds_text} | {gain} | {gap} | {speed} | {ratio} |")
    paired = [(m, row) for m, row in rows.items() if row.get("vs_baseline") or row.get("vs_apd")]
    if paired:
        lines += [
            "",
            "Paired per-seed differences (method - other, mIoU points, runs paired by seed): mean and its "
            "two-sided 95 % Student-t interval over the seeds; **resolved** = the interval excludes 0, i.e. "
            "the seeds can tell the two apart:",
            "",
            "| method | vs baseline | vs apd |",
            "|---|---|---|",
        ]
        for method, row in paired:
            lines.append(f"| {method} | {interval_text(row.get('vs_baseline'))} | {interval_text(row.get('vs_apd'))} |")
    lines += ["", "Per-class IoU (%), mean over seeds:", ""]
    lines.append("| class | " + " | ".join(rows) + " |")
    lines.append("|---|" + "---:|" * len(rows))
    for c, name in enumerate(names):
        cells = [pct(row["per_class"][c]) for row in rows.values()]
        if all(cell == "-" for cell in cells):
            continue
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    (out / "results.md").write_text(text)
    return text


def run_bench(
    recipe: str,
    methods: list[str] | None,
    seeds: list[int],
    out: str,
    overrides: list[str],
    console: Console | None = None,
    figures: bool = True,
) -> dict:
    console = console or Console(stderr=True)
    recipe_path, out_dir = Path(recipe), Path(out)
    if not recipe_path.is_file():
        raise UserError(f"config file not found: {recipe_path}")
    chosen = methods is not None
    methods = list(methods) if chosen else list(DEFAULT_METHODS)
    if "baseline" in methods and methods[0] != "baseline":
        methods = ["baseline", *[m for m in methods if m != "baseline"]]
    check_seeds(seeds)
    runs = [method_config(recipe_path, m, s, out_dir, overrides) for s in seeds for m in methods]  # checked first
    for run in [r for r in runs if r.method == "maskd"]:
        problem = maskd_tokens_problem(run)
        if problem and chosen:
            raise UserError(f"bench: {problem}")
        if problem:  # the default list: every method this recipe can run
            console.print(f"bench: maskd left out: {problem}")
            methods = [m for m in methods if m != "maskd"]
            runs = [r for r in runs if r.method != "maskd"]
    stages = [maskd_token_stage(r, overrides) for r in runs if r.method == "maskd"]
    for run in [*runs, *[stage for stage in stages if stage is not None]]:
        check_not_stale(run)
    base = load_config(recipe_path, overrides)
    if base.teacher is not None:
        check_teacher_unchanged(out_dir / "teacher.json", teacher_digest(base.teacher.weights), runs)
    names = class_names(base.data.dataset)
    start = time.perf_counter()
    teacher = (
        evaluate_teacher(base, out_dir, console)
        if base.teacher is not None and has_trained_weights(base.teacher)
        else None
    )
    quiet = Console(stderr=True, quiet=True)
    results: dict[str, list[dict]] = {m: [] for m in methods}
    finished: list[Run] = []  # the runs with a final checkpoint (figures)
    progress = Progress(
        TextColumn("[bold]bench"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} runs"),
        TextColumn("{task.fields[current]}"),
        TimeElapsedColumn(),
        console=console,
        disable=not console.is_terminal,
    )
    with progress:
        bar = progress.add_task("bench", total=len(runs), current="")
        for i, run in enumerate(runs):
            reused = finished_result(run) is not None
            progress.update(bar, current=f"{run.config.name}{' (reused)' if reused else ''}")
            if not console.is_terminal:
                console.print(
                    f"bench run {i + 1}/{len(runs)}: {run.config.name} ({run.source}){' reused' if reused else ''}"
                )
            if run.method == "maskd" and finished_result(run) is None:
                ensure_maskd_tokens(run, overrides, console)
            try:
                result = _execute(run, quiet)
            except LossNotFinite as exc:
                result = record_divergence(run, exc)
                console.print(f"bench: {run.config.name} diverged ({exc}); recorded, going on")
            results[run.method].append(result)
            if "val" in result:
                finished.append(run)
            progress.update(bar, advance=1)
    rows = summarise(results, seeds, teacher["val"]["mIoU"] if teacher else None, names)
    text = write_results(out_dir, rows, results, seeds, teacher, names)
    if figures:
        make_figures(out_dir, finished, {m: r for m, r in rows.items() if r["mIoU"] is not None}, names, base, console)
    table = Table(title=f"bench: {recipe} (seeds {seeds})")
    for column in ("method", "mIoU", "gain", "gap closed", "s/it"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for method, row in rows.items():
        gain = f"{pct(row['gain'], True)} ± {pct(row['gain_sd'])}" if "gain" in row else "-"
        gap = f"{100 * row['gap_closed']:.1f} %" if "gap_closed" in row else "-"
        miou = f"{pct(row['mIoU'])} ± {pct(row['sd'])}" if row["mIoU"] is not None else "diverged"
        if row["diverged"] and row["mIoU"] is not None:
            miou += f" ({len(row['diverged'])} diverged)"
        speed = f"{row['s_per_it']:.3f}" if row["s_per_it"] is not None else "-"
        table.add_row(method, miou, gain, gap, speed)
    console.print(table)
    console.print(f"{len(runs)} runs in {time.perf_counter() - start:.0f} s; results in {out_dir / 'results.md'}")
    return {"rows": rows, "markdown": text, "teacher": teacher}


def make_figures(out: Path, runs: list[Run], rows: dict, names: list[str], base: Config, console: Console) -> None:
    """``curves.png``, ``per_class.png``, ``predictions.png`` (teacher and each method's first-seed
    student on 3 val images) and ``tsne.png`` (teacher, baseline and APD students' pixel features)."""

    by_method: dict[str, list[Path]] = {}
    for run in runs:
        by_method.setdefault(run.method, []).append(run.config.run_dir)
    bench_figures.training_curves(by_method, out / "curves.png")
    bench_figures.per_class_bars(rows, names, out / "per_class.png")
    _, val = build_datasets(base, console)
    samples = [val[i] for i in range(min(3, len(val)))]
    students = {}
    for method, dirs in by_method.items():
        model = build_model(base.model)
        model.load_state_dict(load_checkpoint(dirs[0] / "checkpoints" / "last.pt")["model"])
        students[method] = model.eval()
    trained = base.teacher is not None and has_trained_weights(base.teacher)
    teacher = {"teacher": build_model(base.teacher, key="teacher").eval()} if trained else {}
    with torch.no_grad():
        prediction_panel({**teacher, **students}, samples, out / "predictions.png")
    chosen = {**teacher, **{m: students[m] for m in ("baseline", "apd") if m in students}}
    try:
        import sklearn  # noqa: F401
    except ImportError:
        console.print("t-SNE figure skipped: scikit-learn is not installed (pip install scikit-learn)")
        return
    batch = [val[i] for i in range(min(4, len(val)))]
    images = torch.stack([b["image"] for b in batch])
    labels = torch.stack([b["label"] for b in batch])
    bench_figures.tsne_figure(chosen, feature_taps(chosen, base), images, labels, names, out / "tsne.png")


def feature_taps(models: dict[str, nn.Module], base: Config) -> dict[str, str]:
    """The ``feat`` tap of each model: the recipe's ``distill.<side>_taps.feat`` when it sets one,
    else the model's default (:func:`~segdistill.models.sources.default_taps`)."""
    distill = base.distill
    taps = {}
    for title, model in models.items():
        chosen = (distill.teacher_taps if title == "teacher" else distill.student_taps) if distill else {}
        taps[title] = chosen.get("feat") or default_taps(model, base.model.num_classes)["feat"]
    return taps
