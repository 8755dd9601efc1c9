"""Model size and cost: parameters and FLOPs (``torch.utils.flop_counter``)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, input_size: tuple[int, int], device: torch.device | str = "cpu") -> int:
    """FLOPs of one eval-mode forward pass on a ``1 x 3 x H x W`` input (a multiply-add counts 2)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, 3, *input_size, device=device))
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())
