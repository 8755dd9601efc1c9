"""Where a distillation step's time goes, method by method, on the embedded default.

Each method with its recipe (as ``benchmarks/distill_step.py``: random weights, one batch of the
generated training data, batch 8, crop 128); the step is split by ``torch.profiler`` into the scopes the
Distiller marks (``segdistill.teacher_forward``, ``segdistill.student_forward``, ``segdistill.loss.ce``,
``segdistill.loss.<method>``) and the script's own ``backward + optimizer steps``. Two more tables:

* the teacher's forward pass in the variants a step could use (``no_grad`` in the recipe's memory
  format, ``inference_mode``, contiguous NCHW, BatchNorm folded into the convolutions), interleaved;
* the training loader: milliseconds per batch of 8 (decode + augment + collate) with ``data.workers``
  0, i.e. what a step waits for when loading is not overlapped with compute.

    python benchmarks/step_profile.py [--steps 5] [--methods baseline kd apd ...]
"""

from __future__ import annotations

import argparse
import copy
import time
from collections import defaultdict

import torch
from distill_step import METHODS, first_batch, make  # noqa: I001  (the sibling benchmark's builders)
from torch.profiler import ProfilerActivity, profile, record_function

from segdistill.config import load_config
from segdistill.engine.builders import build_datasets, build_loaders, build_model
from segdistill.engine.task import train_step
from segdistill.errors import UserError
from segdistill.quickstart import recipe_path

SCOPES = (
    "segdistill.teacher_forward",
    "segdistill.student_forward",
    "segdistill.loss.ce",
    "segdistill.loss.",  # every method's losses together
    "backward+steps",
)


def profiled_step(config, task, optimizer, images, labels) -> None:
    if config.train.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    out = task(images, labels)
    with record_function("backward+steps"):
        train_step(task, out, optimizer)


def scope_times(method: str, run, images, labels, steps: int) -> dict[str, float]:
    """Milliseconds per step in each scope (median over ``steps`` profiled steps is not available from
    the profiler's totals: the mean is reported) and the step's wall time."""
    config, task, optimizer = run
    for _ in range(2):
        profiled_step(config, task, optimizer, images, labels)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            profiled_step(config, task, optimizer, images, labels)
        wall = (time.perf_counter() - start) / steps
    totals: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        for scope in SCOPES:
            if event.key == scope or (scope.endswith(".") and event.key.startswith(scope) and event.key != SCOPES[2]):
                totals[scope] += event.cpu_time_total / 1000 / steps
    totals["step"] = 1000 * wall
    return totals


def fold_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """An eval-mode copy of ``model`` whose Conv2d -> BatchNorm2d pairs (traced with torch.fx) are folded."""
    from torch.fx.experimental.optimization import fuse

    return fuse(copy.deepcopy(model).eval())


def teacher_variants(images: torch.Tensor, rounds: int) -> None:
    config = load_config(recipe_path("synthetic/kd.yaml"), ["teacher.weights=null"])
    torch.manual_seed(0)
    teacher = build_model(config.teacher, config.model.num_classes).eval()
    last = copy.deepcopy(teacher).to(memory_format=torch.channels_last)
    images_last = images.contiguous(memory_format=torch.channels_last)
    try:
        folded = fold_batchnorm(teacher).to(memory_format=torch.channels_last)
    except Exception as exc:  # a model torch.fx cannot trace
        folded = None
        print(f"(BatchNorm folding unavailable: {exc})")

    def run(model, x, mode):
        with mode():
            return model(x)

    variants = {
        "no_grad, channels_last (recipe)": lambda: run(last, images_last, torch.no_grad),
        "inference_mode, channels_last": lambda: run(last, images_last, torch.inference_mode),
        "no_grad, contiguous NCHW": lambda: run(teacher, images, torch.no_grad),
    }
    if folded is not None:
        variants["BatchNorm folded, no_grad, channels_last"] = lambda: run(folded, images_last, torch.no_grad)
    times: dict[str, list[float]] = {k: [] for k in variants}
    for i in range(rounds + 2):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            if i >= 2:
                times[name].append(time.perf_counter() - start)
    base = None
    print(f"\nteacher forward, batch {tuple(images.shape)} (median of {rounds}, interleaved)")
    for name, t in times.items():
        ms = 1000 * sorted(t)[len(t) // 2]
        base = base or ms
        print(f"  {name:42s} {ms:7.1f} ms  x{ms / base:.2f}")
    if folded is not None:
        with torch.no_grad():
            diff = (last(images_last)["out"] - folded(images_last)["out"]).abs().max()
        print(f"  max |logits - folded logits| = {float(diff):.2e}")


def compiled_steps(methods: list[str], images, labels, steps: int) -> None:
    """Each method's step with ``torch.compile`` on the student and the teacher (inductor, default mode)
    against eager, interleaved; the first compiled steps' time (compilation) reported apart."""
    print(f"\ntorch.compile (inductor) vs eager, median of {steps} interleaved steps")
    for method in methods:
        eager = make(method)
        compiled = make(method)
        _, task, _ = compiled
        task.student = torch.compile(task.student)
        if hasattr(task, "teacher"):
            task.teacher = torch.compile(task.teacher)
        start = time.perf_counter()
        try:
            for _ in range(2):
                profiled_step(*compiled, images, labels)
        except UserError as exc:  # the taps' forward hooks on submodules do not run inside a compiled module
            print(f"  {method:9s} cannot run compiled: {exc}")
            continue
        compile_s = time.perf_counter() - start
        times: dict[str, list[float]] = {"eager": [], "compiled": []}
        for i in range(steps + 1):
            for name, run in (("eager", eager), ("compiled", compiled)):
                start = time.perf_counter()
                profiled_step(*run, images, labels)
                if i:
                    times[name].append(time.perf_counter() - start)
        e, c = (1000 * sorted(t)[len(t) // 2] for t in times.values())
        saved = (e - c) / 1000
        pays = f"pays back after {compile_s / saved:.0f} steps" if saved > 0 else "never pays back"
        timing = f"eager {e:7.1f} ms, compiled {c:7.1f} ms (x{e / c:.2f})"
        print(f"  {method:9s} {timing}; first 2 steps {compile_s:.0f} s: {pays}")


def loader_times(batches: int) -> None:
    config = load_config(recipe_path("synthetic/student.yaml"))
    train, _ = build_datasets(config)
    loader, _ = build_loaders(config, train, train)
    it = iter(loader)
    next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    ms = 1000 * (time.perf_counter() - start) / batches
    print(f"\ntraining loader, data.workers 0: {ms:.1f} ms per batch of {config.data.batch_size} (mean of {batches})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--no-extras", action="store_true", help="only the per-method table")
    parser.add_argument("--compile", nargs="*", metavar="METHOD", help="also time torch.compile for these methods")
    args = parser.parse_args()
    images, labels = first_batch()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {tuple(images.shape)}")
    header = ["step", *SCOPES]
    names = ["step", "teacher fwd", "student fwd", "CE", "method losses", "backward+steps"]
    print(f"{'method':9s} " + " ".join(f"{n:>14s}" for n in names) + "   (ms per step, profiled)")
    for method in args.methods:
        totals = scope_times(method, make(method), images, labels, args.steps)
        print(f"{method:9s} " + " ".join(f"{totals.get(k, 0.0):14.1f}" for k in header))
    if not args.no_extras:
        teacher_variants(images, rounds=10)
        loader_times(batches=20)
    if args.compile:
        compiled_steps(args.compile, images, labels, args.steps)


if __name__ == "__main__":
    main()
