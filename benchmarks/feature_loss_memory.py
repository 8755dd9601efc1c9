"""Bytes that MGD and Af-DCD save for backward at Cityscapes feature sizes, counted without computing.

The losses run under ``FakeTensorMode`` (shapes and dtypes only, no data, no FLOPs), so the R101 teacher's
2048-channel last stage can be measured on any machine; every tensor that autograd saves is recorded
through ``saved_tensors_hooks`` and counted once per storage. The loss modules' own weights are listed
apart (train them: add their gradient and the optimiser's momentum, 2x more).

    python benchmarks/feature_loss_memory.py [--batch 8] [--size 90]
"""

from __future__ import annotations

import argparse

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from segdistill.distill.afdcd import AfDCDLoss
from segdistill.distill.mgd import MGDLoss


def saved_for_backward(mode: FakeTensorMode, loss: torch.nn.Module, *inputs: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd saves while ``loss(*inputs)`` runs under ``mode``."""
    sizes: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = id(t.untyped_storage())
        sizes[key] = max(sizes.get(key, 0), t.numel() * t.element_size())
        return t

    with mode, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss(*inputs)
    return sum(sizes.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=90, help="the feature grid's side (713 / 8 -> 90)")
    args = parser.parse_args()
    print(f"batch {args.batch}, {args.size}x{args.size} features, float32; MiB")
    print("| loss | C_s | C_t | saved for backward | loss-module weights |")
    print("|---|---:|---:|---:|---:|")
    for cs, ct in ((512, 512), (512, 2048), (128, 2048)):
        for name in ("mgd", "afdcd"):
            mode = FakeTensorMode()
            with mode:
                loss = MGDLoss(cs, ct) if name == "mgd" else AfDCDLoss(cs, ct, windows_per_chunk=None)
                student = torch.randn(args.batch, cs, args.size, args.size, requires_grad=True)
                teacher = torch.randn(args.batch, ct, args.size, args.size)
            saved = saved_for_backward(mode, loss, student, teacher)
            weights = sum(p.numel() * p.element_size() for p in loss.parameters())
            print(f"| {name} | {cs} | {ct} | {saved / 2**20:.0f} | {weights / 2**20:.0f} |")


if __name__ == "__main__":
    main()
