"""Every distillation method against the student baseline on the embedded default, same teacher,
student, data, schedule and seeds: val mIoU mean and spread, gain over the baseline.

    python benchmarks/compare_methods.py --seeds 0 1 2 [--methods kd apd ...] [--out runs/compare]

Now a thin wrapper of ``segdistill bench configs/synthetic/apd.yaml --no-figures`` (which it
predates): each run is ``segdistill train configs/synthetic/student.yaml`` (baseline) or
``segdistill distill configs/synthetic/<method>.yaml`` with ``seed=S``, named ``<method>_seed<S>``
in ``--out``; finished runs with an unchanged config are reused, interrupted ones resume. Writes
``results.md`` and ``results.csv``. Training seconds per iteration are reported too, but runs are
sequential and share the machine with whatever else runs: for clean speed ratios use
``benchmarks/distill_step.py``.
"""

from __future__ import annotations

import argparse

from segdistill.bench import DEFAULT_METHODS, run_bench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--out", default="runs/compare")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every run")
    args = parser.parse_args()
    run_bench("configs/synthetic/apd.yaml", args.methods, args.seeds, args.out, args.overrides, figures=False)


if __name__ == "__main__":
    main()
