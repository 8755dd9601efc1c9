"""Model size and cost: parameters and FLOPs (``torch.utils.flop_counter``)."""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from ..models.measure import count_flops, count_parameters

__all__ = ["count_flops", "count_parameters", "latency_ms", "profile_models"]


def latency_ms(
    model: nn.Module, input_size: tuple[int, int], device: torch.device | str = "cpu", runs: int = 10
) -> float:
    """Median milliseconds of one eval-mode forward pass on a ``1 x 3 x H x W`` input (after a warm-up)."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    x = torch.randn(1, 3, *input_size, device=device)
    times = []
    try:
        with torch.no_grad():
            for i in range(runs + 1):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                model(x)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if i:  # the first pass is a warm-up
                    times.append(time.perf_counter() - start)
    finally:
        model.train(was_training)
    return 1000 * statistics.median(times)


def profile_models(
    models: dict[str, nn.Module], input_size: tuple[int, int], runs: int = 10, device: torch.device | None = None
) -> dict[str, dict]:
    """Parameters, FLOPs and CPU latency of each model, side by side, plus the latency on ``device``
    when it is an accelerator (the run's ``train.device``)."""
    rows = {}
    for name, model in models.items():
        row = {
            "parameters": sum(p.numel() for p in model.parameters()),
            "flops": count_flops(model, input_size),
            "cpu_ms": latency_ms(model, input_size, "cpu", runs),
        }
        if device is not None and device.type != "cpu":
            row[f"{device.type}_ms"] = latency_ms(model.to(device), input_size, device, runs)
            model.cpu()
        rows[name] = row
    return rows
