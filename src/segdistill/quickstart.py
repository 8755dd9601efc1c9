"""``segdistill quickstart``: the main job on the embedded default dataset.

Generates the synthetic street scenes if absent, loads the shipped teacher, trains the student
baseline and the APD student with the same seed and schedule, evaluates all three, prints a table
and writes ``<out>/report.md`` with a prediction figure.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .config import Config, load_config
from .data.datasets import SyntheticDataset
from .data.labels import TRAIN_CLASSES
from .data.synthetic import DEFAULT_PARAMS as default
from .data.synthetic import read_params
from .engine.builders import build_model, load_weights
from .engine.run import evaluate_model, evaluation_loader, run_distill, run_train
from .models import count_parameters
from .report.figures import prediction_panel

RECIPES = Path(__file__).resolve().parent / "configs"
# The quickstart's schedule: half the recipes' 1000 iterations, so that the whole command (data,
# teacher evaluation, both students, report) fits in 5 minutes on 2 cores (README, "What the
# quickstart measures"); `--iters 1000` runs the recipes' own schedule, as `segdistill bench` does.
QUICKSTART_ITERS = 500


def recipe_path(name: str) -> Path:
    """Path of a shipped recipe, e.g. ``recipe_path("synthetic/apd.yaml")``."""
    return RECIPES / name


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def quickstart_configs(
    out: str, data_root: str, seed: int, overrides: list[str], iters: int = QUICKSTART_ITERS
) -> tuple[Config, Config]:
    """The two students' configs: the recipes with the quickstart's folders, seed and schedule (``overrides``
    win, ``train.iters=`` included)."""
    common = [f"out_dir={out}", f"seed={seed}", f"data.root={data_root}", f"train.iters={iters}", *overrides]
    student = load_config(recipe_path("synthetic/student.yaml"), ["name=student", *common])
    apd = load_config(recipe_path("synthetic/apd.yaml"), ["name=apd", *common])
    return student, apd


def describe_dataset(root: Path, console: Console) -> dict:
    """The generator's parameters from ``synth.json``; a warning when they are not the defaults (the
    README's figures are for the default dataset)."""
    used = read_params(root)
    if used != default:
        console.print(
            f"[yellow]warning:[/] {root / 'synth.json'} describes a non-default dataset {used}; "
            f"the README's figures are for {default}",
            soft_wrap=True,
        )
    return used


def run_quickstart(
    out: str = "runs/quickstart",
    data_root: str = "data/synthetic",
    seed: int = 0,
    overrides: list[str] | None = None,
    console: Console | None = None,
    iters: int = QUICKSTART_ITERS,
) -> dict:
    console = console or Console(stderr=True)
    start = time.perf_counter()
    SyntheticDataset.prepare(data_root, console.print)
    dataset = describe_dataset(Path(data_root), console)
    student_cfg, apd_cfg = quickstart_configs(out, data_root, seed, list(overrides or []), iters)

    assert apd_cfg.teacher is not None
    teacher = build_model(apd_cfg.teacher)
    loader = evaluation_loader(apd_cfg, console=console)
    val_set = loader.dataset
    console.print(f"evaluating the shipped teacher ({apd_cfg.teacher.weights}) on {len(val_set)} val images")
    teacher_metrics = evaluate_model(apd_cfg, teacher, loader)  # the recipe's protocol, as eval and bench

    console.rule("student baseline (cross-entropy only)")
    baseline = run_train(student_cfg, console=console)
    console.rule("APD student (same seed and schedule)")
    apd = run_distill(apd_cfg, console=console)

    results = {
        "teacher": {"val": teacher_metrics, "parameters": count_parameters(teacher)},
        "baseline": baseline,
        "apd": apd,
        "wall_seconds": time.perf_counter() - start,
        "dataset": dataset,
        "seed": seed,
        "iters": student_cfg.train.iters,
    }
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "results.json").write_text(json.dumps(results, indent=2))

    student = build_model(student_cfg.model)
    load_weights(student, str(student_cfg.run_dir / "checkpoints/last.pt"))
    apd_student = build_model(apd_cfg.model)
    load_weights(apd_student, str(apd_cfg.run_dir / "checkpoints/last.pt"))
    samples = [val_set[i] for i in range(0, len(val_set), max(1, len(val_set) // 4))][:4]
    prediction_panel(
        {"teacher": teacher.cpu(), "student": student, "APD student": apd_student},
        samples,
        Path(out) / "predictions.png",
    )
    print_table(results, console)
    write_report(results, Path(out) / "report.md", student_cfg)
    console.print(f"report: {Path(out) / 'report.md'}  (wall time {results['wall_seconds'] / 60:.1f} min)")
    return results


def print_table(results: dict, console: Console) -> None:
    teacher, base, apd = results["teacher"], results["baseline"], results["apd"]
    table = Table(title="segdistill quickstart: val mIoU on the synthetic street scenes")
    for col in ("model", "mIoU", "gain", "parameters", "train time"):
        table.add_column(col, justify="right" if col != "model" else "left")
    gain = apd["val"]["mIoU"] - base["val"]["mIoU"]
    table.add_row("teacher (shipped)", _fmt(teacher["val"]["mIoU"]), "", f"{teacher['parameters'] / 1e6:.2f} M", "")
    table.add_row(
        "student baseline",
        _fmt(base["val"]["mIoU"]),
        "",
        f"{base['parameters'] / 1e6:.2f} M",
        f"{base['train_seconds']:.0f} s",
    )
    table.add_row(
        "APD student",
        _fmt(apd["val"]["mIoU"]),
        f"{100 * gain:+.2f}",
        f"{apd['parameters'] / 1e6:.2f} M",
        f"{apd['train_seconds']:.0f} s",
    )
    console.print(table)
    per_class = Table(title="per-class IoU: baseline -> APD")
    for col in ("class", "teacher", "baseline", "APD", "change"):
        per_class.add_column(col, justify="right" if col != "class" else "left")
    for name, t, b, a in zip(TRAIN_CLASSES, teacher["val"]["iou"], base["val"]["iou"], apd["val"]["iou"]):
        if t is None and b is None and a is None:
            continue
        change = "-" if a is None or b is None else f"{100 * (a - b):+.2f}"
        per_class.add_row(name, _fmt(t), _fmt(b), _fmt(a), change)
    console.print(per_class)


def _dataset_line(dataset: dict | None) -> str:
    if not dataset:
        return "unknown generator parameters"
    return (
        f"{dataset['train']} train / {dataset['val']} val scenes at {dataset['height']}x{dataset['width']}, "
        f"generator seed {dataset['seed']}"
    )


def write_report(results: dict, path: Path, config: Config) -> None:
    teacher, base, apd = results["teacher"], results["baseline"], results["apd"]
    gain = apd["val"]["mIoU"] - base["val"]["mIoU"]
    lines = [
        "# segdistill quickstart",
        "",
        f"Synthetic street scenes (Cityscapes layout; {_dataset_line(results.get('dataset'))}), training seed "
        f"{results['seed']}, {results['iters']} iterations of batch {config.data.batch_size} for both students; "
        f"wall time {results['wall_seconds'] / 60:.1f} min.",
        "",
        "| model | val mIoU | gain | parameters | train time |",
        "|---|---:|---:|---:|---:|",
        f"| teacher (shipped) | {_fmt(teacher['val']['mIoU'])} | | {teacher['parameters'] / 1e6:.2f} M | |",
        f"| student baseline | {_fmt(base['val']['mIoU'])} | | {base['parameters'] / 1e6:.2f} M | "
        f"{base['train_seconds']:.0f} s |",
        f"| APD student | {_fmt(apd['val']['mIoU'])} | {100 * gain:+.2f} | {apd['parameters'] / 1e6:.2f} M | "
        f"{apd['train_seconds']:.0f} s |",
        "",
        "| class | teacher | baseline | APD | change |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, t, b, a in zip(TRAIN_CLASSES, teacher["val"]["iou"], base["val"]["iou"], apd["val"]["iou"]):
        if t is None and b is None and a is None:
            continue
        change = "-" if a is None or b is None else f"{100 * (a - b):+.2f}"
        lines.append(f"| {name} | {_fmt(t)} | {_fmt(b)} | {_fmt(a)} | {change} |")
    lines += ["", "![image | ground truth | teacher | student | APD student](predictions.png)", ""]
    path.write_text("\n".join(lines))
