"""Every distillation method against the student baseline on the embedded default, same teacher,
student, data, schedule and seeds: val mIoU mean and spread, gain over the baseline.

    python benchmarks/compare_methods.py --seeds 0 1 2 [--methods kd apd ...] [--out runs/compare]

Each run is ``segdistill train configs/synthetic/student.yaml`` (baseline) or
``segdistill distill configs/synthetic/<method>.yaml`` with ``seed=S``; finished runs (a
``summary.json``) are skipped, so an interrupted grid resumes. Prints a markdown table and writes it
to ``<out>/results.md``. Training seconds per iteration are reported too, but runs are sequential
and share the machine with whatever else runs: for clean speed ratios use
``benchmarks/distill_step.py``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

METHODS = ["baseline", "kd", "fitnet", "at", "skd", "ifvd", "cwd", "dist", "cirkd", "apd"]


def run_one(method: str, seed: int, out: Path, extra: list[str]) -> dict:
    name = f"{method}_seed{seed}"
    summary = out / name / "summary.json"
    if not summary.is_file():
        command = "train" if method == "baseline" else "distill"
        config = "student" if method == "baseline" else method
        args = [
            sys.executable,
            "-m",
            "segdistill",
            command,
            f"configs/synthetic/{config}.yaml",
            f"seed={seed}",
            f"name={name}",
            f"out_dir={out}",
            *extra,
        ]
        print(" ".join(args[2:]), flush=True)
        subprocess.run(args, check=True)
    return json.loads(summary.read_text())


def fmt(values: list[float]) -> str:
    mean = statistics.fmean(values)
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * mean:.2f} ± {100 * spread:.2f}" if len(values) > 1 else f"{100 * mean:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--out", default="runs/compare")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every run")
    args = parser.parse_args()
    out = Path(args.out)
    # Seed-outer order: an interrupted grid still has every method at the earlier seeds.
    runs = {(m, s): run_one(m, s, out, args.overrides) for s in args.seeds for m in args.methods}
    results = {m: [runs[m, s] for s in args.seeds] for m in args.methods}
    iters = {m: [r["val"]["train_seconds"] for r in rs] for m, rs in results.items()}
    base = results.get("baseline")
    lines = [
        f"seeds {args.seeds}; val mIoU (%) mean ± sd over seeds; s/it = training seconds per iteration",
        "",
        "| method | mIoU | per seed | gain over baseline | s/it | time vs baseline |",
        "|---|---|---|---|---|---|",
    ]
    base_miou = statistics.fmean(r["val"]["mIoU"] for r in base) if base else None
    base_time = statistics.fmean(iters["baseline"]) if base else None
    for m, rs in results.items():
        mious = [r["val"]["mIoU"] for r in rs]
        n_iters = rs[0]["iters"]
        gain = f"{100 * (statistics.fmean(mious) - base_miou):+.2f}" if base else "-"
        if base and len(mious) > 1 and len(base) == len(mious):
            per_seed = [a["val"]["mIoU"] - b["val"]["mIoU"] for a, b in zip(rs, base)]
            gain += f" ± {100 * statistics.stdev(per_seed):.2f}"
        t = statistics.fmean(iters[m])
        ratio = f"x{t / base_time:.2f}" if base else "-"
        seeds = " / ".join(f"{100 * v:.2f}" for v in mious)
        lines.append(f"| {m} | {fmt(mious)} | {seeds} | {gain} | {t / n_iters:.3f} | {ratio} |")
    text = "\n".join(lines)
    print(text)
    (out / "results.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
