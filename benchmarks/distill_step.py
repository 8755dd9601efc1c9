"""A whole distillation step on the embedded default: KD only against KD + APD, side by side.

Teacher forward + student forward/backward + the losses + the optimizer steps (APD's teacher-adapter
step included), with the recipes' models (``configs/synthetic/apd.yaml``), batch 8, crop 128, and the recipe's
precision and memory format. Random weights: the cost does not depend on them.

    python benchmarks/distill_step.py [--steps 20]
"""

from __future__ import annotations

import argparse
import time

import torch

from segdistill.config import load_config
from segdistill.engine.builders import build_model
from segdistill.engine.run import build_distiller
from segdistill.engine.trainer import autocast_context
from segdistill.quickstart import recipe_path


def make(methods: str):
    overrides = [f"distill.methods={methods}", "teacher.weights=null"]
    if "apd" not in methods:  # the recipe's APD options and weights name no loss of a KD-only run
        overrides += ["distill.options={}", "distill.weights={}"]
    config = load_config(recipe_path("synthetic/apd.yaml"), overrides)
    torch.manual_seed(0)
    student, teacher = build_model(config.model), build_model(config.teacher)
    distiller = build_distiller(config, student, teacher, torch.device("cpu"))
    if config.train.channels_last:
        distiller = distiller.to(memory_format=torch.channels_last)
    groups = distiller.param_groups(config.train.lr, config.train.head_lr_mult)
    return config, distiller, torch.optim.SGD(groups, lr=config.train.lr, momentum=0.9, weight_decay=1e-4)


def step(config, distiller, optimizer, images, labels) -> None:
    if config.train.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with autocast_context(torch.device("cpu"), config.train.amp):
        out = distiller(images, labels)
    for name, _, own in distiller.extra_steps:
        own.zero_grad(set_to_none=True)
        out.extra_losses[name].backward()
        own.step()
    optimizer.zero_grad(set_to_none=True)
    out.total.backward()
    optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    images = torch.randn(8, 3, 128, 128, generator=g)
    labels = torch.randint(0, 15, (8, 128, 128), generator=g)
    runs = {name: make(methods) for name, methods in (("KD", "[kd]"), ("KD + APD", "[apd]"))}
    times: dict[str, list[float]] = {name: [] for name in runs}
    distiller = runs["KD + APD"][1]
    cfg = runs["KD + APD"][0].train
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} threads, amp={cfg.amp}, channels_last={cfg.channels_last}")
    print(f"losses of 'KD + APD': {sorted(distiller.losses)}; of 'KD': {sorted(runs['KD'][1].losses)}")
    for i in range(args.steps + 2):  # interleaved, so that both see the same machine load; 2 warm-up rounds
        for name, (config, distiller, optimizer) in runs.items():
            start = time.perf_counter()
            step(config, distiller, optimizer, images, labels)
            if i >= 2:
                times[name].append(time.perf_counter() - start)
    median = {name: sorted(t)[len(t) // 2] for name, t in times.items()}
    for name, seconds in median.items():
        print(f"{name:9s}: {1000 * seconds:7.1f} ms/step (median of {args.steps}), {8 / seconds:5.1f} images/s")
    print(f"APD adds {100 * (median['KD + APD'] / median['KD'] - 1):+.1f}% to a KD step")


if __name__ == "__main__":
    main()
