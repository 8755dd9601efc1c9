"""One training step of the embedded default student in float32 and bf16, contiguous and channels_last.

bf16 autocast on a CPU is only fast where the CPU has native bf16 instructions (AVX512-BF16, AMX);
elsewhere it is emulated. This prints the step time of each setting and its ratio to float32, measured
in one run, so a user can see which to pick on their machine.

    python benchmarks/precision.py [--steps 3] [--recipe synthetic/teacher.yaml]
"""

from __future__ import annotations

import argparse
import time

import torch

from segdistill.config import load_config
from segdistill.engine.builders import build_model
from segdistill.engine.runtime import autocast_context
from segdistill.engine.task import SupervisedTask
from segdistill.quickstart import recipe_path


def step_seconds(recipe: str, amp: str, channels_last: bool, steps: int) -> float:
    """Median seconds of one SGD step (forward, backward, update) of ``recipe``'s model at batch 8, crop 128."""
    config = load_config(recipe_path(recipe), [f"train.amp={amp}"])
    torch.manual_seed(0)
    task = SupervisedTask(build_model(config.model), aux_weight=config.train.aux_weight)
    if channels_last:
        task = task.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(task.parameters(), lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(8, 3, 128, 128, generator=g)
    labels = torch.randint(0, 19, (8, 128, 128), generator=g)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    times = []
    for i in range(steps + 1):  # one warm-up step
        start = time.perf_counter()
        with autocast_context(torch.device("cpu"), amp):
            out = task(images, labels)
        optimizer.zero_grad(set_to_none=True)
        out.total.backward()
        optimizer.step()
        if i > 0:
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--recipe", default="synthetic/student.yaml", help="a recipe under configs/")
    args = parser.parse_args()
    capability = torch.backends.cpu.get_cpu_capability()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability {capability}, {args.recipe}")
    base = None
    for amp in ("none", "bf16"):
        for channels_last in (False, True):
            seconds = step_seconds(args.recipe, amp, channels_last, args.steps)
            base = base or seconds
            name = f"{'float32' if amp == 'none' else 'bf16'}{' + channels_last' if channels_last else ''}"
            print(f"{name:24s} {1000 * seconds:8.0f} ms/step  x{seconds / base:5.2f} of float32", flush=True)


if __name__ == "__main__":
    main()
