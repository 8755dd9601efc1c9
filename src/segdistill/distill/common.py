"""Small helpers shared by the distillation losses: float32 terms, grid and channel checks, label resize
and the one-hot of valid labels."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import UserError


def float32(x: torch.Tensor) -> torch.Tensor:
    """Loss terms are computed in float32 (float64 inputs stay float64, for parity tests)."""
    return x if x.dtype == torch.float64 else x.float()


def check_same_grid(name: str, student: torch.Tensor, teacher: torch.Tensor) -> None:
    """Losses that compare maps position by position need both on one grid (the Distiller resizes the
    teacher's maps to the student's; a direct call must do it itself)."""
    if student.shape[-2:] != teacher.shape[-2:] or student.shape[0] != teacher.shape[0]:
        raise UserError(
            f"{name}: student map {tuple(student.shape)} and teacher map {tuple(teacher.shape)} differ in batch "
            "or spatial size"
        )


def check_channels(name: str, side: str, expected: int, tensor: torch.Tensor) -> None:
    if tensor.shape[1] != expected:
        raise UserError(f"{name} was built for {expected} {side} channels, the {side} tap gives {tensor.shape[1]}")


def resize_labels(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of ``B x H x W`` integer labels to ``B x h x w``."""
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels
    return F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()


def one_hot_valid(
    labels: torch.Tensor, num_classes: int, ignore_index: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """``B x h x w`` labels -> float one-hot ``B x K x h x w``; ignored (or out-of-range) pixels are all 0."""
    valid = (labels >= 0) & (labels < num_classes) & (labels != ignore_index)
    safe = torch.where(valid, labels, torch.zeros_like(labels))
    onehot = F.one_hot(safe, num_classes).permute(0, 3, 1, 2).to(dtype)
    return onehot * valid[:, None].to(dtype)
