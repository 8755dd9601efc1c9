"""A whole training step on the embedded default for every method, side by side with the student
baseline: teacher forward + student forward/backward + the method's losses + every optimizer step
(APD's teacher adapter before the student's step, SKD/IFVD's discriminator after it).

Each method with its recipe (``configs/synthetic/<method>.yaml``: the same student and teacher, batch
8, crop 128, the recipe's precision and memory format); the baseline is ``student.yaml`` (cross-entropy
only). Random weights (the cost does not depend on them); one batch of the generated training data,
so the number of classes present is realistic. Steps are interleaved across methods so every method
sees the same machine load; the median is reported.

    python benchmarks/distill_step.py [--steps 10] [--methods baseline kd apd ...]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from segdistill.base.method_options import BENCH_METHODS
from segdistill.config import load_config
from segdistill.engine.builders import build_datasets, build_model
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--methods", nargs="+", default=METHODS)
    args = parser.parse_args()
    config = load_config(recipe_path("synthetic/student.yaml"))
    train, _ = build_datasets(config)
    samples = [train[i] for i in range(config.data.batch_size)]
    images = torch.stack([torch.as_tensor(s["image"]) for s in samples])
    labels = torch.stack([torch.as_tensor(s["label"]) for s in samples]).long()
    runs = {m: make(m) for m in args.methods}
    times: dict[str, list[float]] = {m: [] for m in runs}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {tuple(images.shape)}")
    for i in range(args.steps + 2):  # interleaved; 2 warm-up rounds
        for name, (cfg, task, optimizer) in runs.items():
            start = time.perf_counter()
            step(cfg, task, optimizer, images, labels)
            if i >= 2:
                times[name].append(time.perf_counter() - start)
    median = {name: sorted(t)[len(t) // 2] for name, t in times.items()}
    base = median.get("baseline")
    kd = median.get("kd")
    print(f"{'method':9s} {'ms/step':>8s} {'vs baseline':>12s} {'vs KD':>7s}   (median of {args.steps} steps)")
    for name, seconds in median.items():
        vs_base = f"x{seconds / base:.2f}" if base else "-"
        vs_kd = f"x{seconds / kd:.2f}" if kd else "-"
        print(f"{name:9s} {1000 * seconds:8.1f} {vs_base:>12s} {vs_kd:>7s}")


if __name__ == "__main__":
    main()
