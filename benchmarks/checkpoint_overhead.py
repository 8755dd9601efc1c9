"""What atomic checkpointing costs: a plain ``torch.save`` against segdistill's checkpoint write
(integrity digest, temporary file, fsync, rename, the previous checkpoint kept by a hard link), both
of the full training state of a recipe (student, optimizer, the method's modules and own optimizers,
RNG states), beside one training step of the same recipe, measured in one run.

    python benchmarks/checkpoint_overhead.py [--recipe synthetic/apd.yaml] [--repeats 7] [--steps 5]

Interleaved repeats, medians. Random teacher weights (the cost does not depend on them).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from segdistill.config import load_config
from segdistill.engine.builders import build_datasets, build_loaders, build_model
from segdistill.engine.checkpoint import save_training_checkpoint, state_digest
from segdistill.engine.run import build_distiller
from segdistill.engine.runtime import seed_everything
from segdistill.engine.trainer import Trainer
from segdistill.quickstart import recipe_path


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="synthetic/apd.yaml")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="ckpt-bench-"))
    config = load_config(recipe_path(args.recipe), ["teacher.weights=null", f"out_dir={out}"])
    seed_everything(config.seed)
    device = torch.device("cpu")
    train_set, val_set = build_datasets(config)
    train_loader, val_loader = build_loaders(config, train_set, val_set)
    student, teacher = build_model(config.model), build_model(config.teacher, config.model.num_classes)
    task = build_distiller(config, student, teacher, device)
    trainer = Trainer(config, task, train_loader, val_loader, config.model.num_classes, device)
    task.train()
    batches = trainer._batches()

    def train_step() -> None:
        batch = next(batches)
        images = batch["image"]
        if config.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with trainer.autocast():
            step_out = task(images, batch["label"])
        trainer._train_step(step_out)

    train_step()  # warm-up; fills the optimizers' momentum buffers
    steps = [timed(train_step) for _ in range(args.steps)]
    state = trainer.state_dict()
    plain, atomic, digest = [], [], []
    for _ in range(args.repeats):
        plain.append(timed(lambda: torch.save(state, out / "plain.pt")))
        atomic.append(timed(lambda: save_training_checkpoint(state, out / "last.pt")))
        digest.append(timed(lambda: state_digest(state)))
    size = (out / "last.pt").stat().st_size
    step, p, a, d = (statistics.median(x) * 1000 for x in (steps, plain, atomic, digest))
    interval = config.train.checkpoint_interval
    print(f"recipe {args.recipe}: checkpoint {size / 1e6:.1f} MB, training step {step:.0f} ms (median of {args.steps})")
    print(f"| write | ms | x plain | per step at checkpoint_interval={interval} |")
    print("|---|---:|---:|---:|")
    print(f"| plain torch.save | {p:.0f} | x1.00 | {100 * p / (interval * step):.2f} % |")
    share = 100 * a / (interval * step)
    print(f"| atomic (digest + tmp + fsync + rename + previous) | {a:.0f} | x{a / p:.2f} | {share:.2f} % |")
    print(f"| of which the digest | {d:.0f} | x{d / p:.2f} | |")


if __name__ == "__main__":
    main()
