"""Small helpers shared by the distillation losses."""

from __future__ import annotations

import torch

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
