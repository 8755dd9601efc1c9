"""A whole training step on the embedded default for every method, side by side with the student
baseline: teacher forward + student forward/backward + the method's losses + every optimizer step
(APD's teacher adapter before the student's step, SKD/IFVD's discriminator after it).

Each method with its recipe (``configs/synthetic/<method>.yaml``: the same student and teacher, batch
8, crop 128, the recipe's precision and memory format); the baseline is ``student.yaml`` (cross-entropy
only). Random weights (the cost does not depend on them); one batch of the generated training data,
so the number of classes present is realistic. Steps are interleaved across methods so every method
sees the same machine load; the median is reported.

    python benchmarks/distill_step.py [--steps 10] [--methods baseline kd apd ...]
    python benchmarks/distill_step.py --loading   # each step also loads its batch, data.cache off vs on

``--loading``: what a training step costs with its data. Every timed step first takes the next batch of
the recipe's training loader (decode, augmentation, collation; ``data.workers`` 0), from an uncached
loader ("before") and from a cached one after a full epoch ("after", ``data.cache: true``); both columns
interleaved in one run, each against the baseline and KD of its own column.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from segdistill.base.method_options import BENCH_METHODS
from segdistill.config import load_config
from segdistill.engine.builders import build_datasets, build_loaders, build_model
from segdistill.engine.run import build_distiller
from segdistill.engine.runtime import autocast_context
from segdistill.engine.task import SupervisedTask, train_step
from segdistill.quickstart import recipe_path

METHODS = list(BENCH_METHODS)  # the baseline and every method, in the README's order
TOKENS = Path(tempfile.gettempdir()) / "segdistill_distill_step_maskd_tokens.pt"


def make(method: str):
    torch.manual_seed(0)
    if method == "baseline":
        config = load_config(recipe_path("synthetic/student.yaml"))
        task = SupervisedTask(build_model(config.model), config.train.aux_weight)
    else:
        extra = ["teacher.weights=null"]
        if method == "maskd":  # stage 2 with stand-in tokens (the step's cost does not depend on their values)
            torch.save({"mask_token": torch.randn(8, 19) * 0.01}, TOKENS)
            extra.append(f"distill.options.maskd.tokens={TOKENS}")
        config = load_config(recipe_path(f"synthetic/{method}.yaml"), extra)
        student, teacher = build_model(config.model), build_model(config.teacher, config.model.num_classes)
        task = build_distiller(config, student, teacher, torch.device("cpu"))
    if config.train.channels_last:
        task = task.to(memory_format=torch.channels_last)
    groups = task.param_groups(config.train.lr, config.train.head_lr_mult)
    task.train()
    return config, task, torch.optim.SGD(groups, lr=config.train.lr, momentum=0.9, weight_decay=1e-4)


def step(config, task, optimizer, images, labels) -> None:
    if config.train.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with autocast_context(torch.device("cpu"), config.train.amp):
        out = task(images, labels)
    train_step(task, out, optimizer)


def first_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``data.batch_size`` training samples of the embedded default, augmented: images
    ``B x 3 x 128 x 128`` and labels ``B x 128 x 128``."""
    config = load_config(recipe_path("synthetic/student.yaml"))
    train, _ = build_datasets(config)
    samples = [train[i] for i in range(config.data.batch_size)]
    images = torch.stack([torch.as_tensor(s["image"]) for s in samples])
    return images, torch.stack([torch.as_tensor(s["label"]) for s in samples]).long()


def loader(cache: bool):
    """The recipe's training batches, endlessly; a cached loader has read every file once already."""
    config = load_config(recipe_path("synthetic/student.yaml"), [f"data.cache={str(cache).lower()}"])
    train, val = build_datasets(config)
    batches, _ = build_loaders(config, train, val)
    if cache:
        for _ in batches:  # one epoch: every file decoded once
            pass
    while True:
        yield from batches


def report(title: str, times: dict[str, list[float]], steps: int) -> dict[str, float]:
    median = {name: sorted(t)[len(t) // 2] for name, t in times.items()}
    base = median.get("baseline")
    kd = median.get("kd")
    print(f"{title}\n{'method':9s} {'ms/step':>8s} {'vs baseline':>12s} {'vs KD':>7s}   (median of {steps} steps)")
    for name, seconds in median.items():
        vs_base = f"x{seconds / base:.2f}" if base else "-"
        vs_kd = f"x{seconds / kd:.2f}" if kd else "-"
        print(f"{name:9s} {1000 * seconds:8.1f} {vs_base:>12s} {vs_kd:>7s}")
    return median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--loading", action="store_true", help="each step loads its batch: data.cache off vs on")
    args = parser.parse_args()
    images, labels = first_batch()
    runs = {m: make(m) for m in args.methods}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {tuple(images.shape)}")
    if not args.loading:
        times: dict[str, list[float]] = {m: [] for m in runs}
        for i in range(args.steps + 2):  # interleaved; 2 warm-up rounds
            for name, (cfg, task, optimizer) in runs.items():
                start = time.perf_counter()
                step(cfg, task, optimizer, images, labels)
                if i >= 2:
                    times[name].append(time.perf_counter() - start)
        report("", times, args.steps)
        return
    sources = {"before (no cache)": loader(False), "after (data.cache)": loader(True)}
    columns: dict[str, dict[str, list[float]]] = {k: {m: [] for m in runs} for k in sources}
    for i in range(args.steps + 2):
        for name, (cfg, task, optimizer) in runs.items():
            for column, batches in sources.items():
                start = time.perf_counter()
                batch = next(batches)
                step(cfg, task, optimizer, batch["image"], batch["label"])
                if i >= 2:
                    columns[column][name].append(time.perf_counter() - start)
    medians = {column: report(f"\nwith loading, {column}", times, args.steps) for column, times in columns.items()}
    before, after = medians.values()
    print("\nafter / before: " + ", ".join(f"{m} x{after[m] / before[m]:.2f}" for m in runs))


if __name__ == "__main__":
    main()
