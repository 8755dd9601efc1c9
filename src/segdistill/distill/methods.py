"""Distillation methods by name: each builds its loss modules and default weights from a config.

A plain dict, no registry magic: ``METHODS[name](context, options) -> (losses, weights)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..errors import UserError
from .apd import APDLoss
from .base import DistillLoss
from .kd import KDLoss


@dataclass
class MethodContext:
    num_classes: int
    student_channels: dict[str, int]  # tap -> channels, probed from the student
    teacher_channels: dict[str, int]
    ignore_index: int = 255


def _options(options: dict[str, Any], allowed: dict[str, Any], method: str) -> dict[str, Any]:
    import difflib

    merged = dict(allowed)
    for key, value in options.items():
        if key not in allowed:
            close = difflib.get_close_matches(key, list(allowed), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (options: {', '.join(allowed)})"
            raise UserError(f"unknown option distill.options.{method}.{key}{hint}")
        merged[key] = value
    return merged


def build_kd(ctx: MethodContext, options: dict[str, Any]) -> tuple[dict[str, DistillLoss], dict[str, float]]:
    """Pixel-wise KD on logits; release: T=1, 'mean' reduction, weight 10."""
    opts = _options(options, {"temperature": 1.0, "reduction": "mean"}, "kd")
    return {"kd": KDLoss(opts["temperature"], opts["reduction"])}, {"kd": 10.0}


def build_apd(ctx: MethodContext, options: dict[str, Any]) -> tuple[dict[str, DistillLoss], dict[str, float]]:
    """APD as released: APD KL 10, prototype alignment 10, scale 10, adapters on, plus logit KD 10 (T=1)."""
    opts = _options(
        options,
        {
            "scope": "batch",
            "adapter": True,
            "adapter_channels": 512,
            "scale": 10.0,
            "teacher_adapter_lr": 1e-5,
            "with_kd": True,
            "kd_temperature": 1.0,
        },
        "apd",
    )
    losses: dict[str, DistillLoss] = {
        "apd": APDLoss(
            ctx.num_classes,
            ctx.student_channels["feat"],
            ctx.teacher_channels["feat"],
            adapter=opts["adapter"],
            adapter_channels=opts["adapter_channels"],
            scale=opts["scale"],
            ignore_index=ctx.ignore_index,
            scope=opts["scope"],
            teacher_adapter_lr=opts["teacher_adapter_lr"],
        )
    }
    weights = {"apd": 10.0}
    if opts["with_kd"]:
        losses["kd"] = KDLoss(opts["kd_temperature"])
        weights["kd"] = 10.0
    return losses, weights


METHODS: dict[str, Callable[[MethodContext, dict[str, Any]], tuple[dict[str, DistillLoss], dict[str, float]]]] = {
    "kd": build_kd,
    "apd": build_apd,
}


def build_methods(
    names: list[str], ctx: MethodContext, options: dict[str, dict[str, Any]], weights: dict[str, float]
) -> tuple[dict[str, nn.Module], dict[str, float]]:
    """Losses and weights for the listed methods; ``weights`` (from the config) override the defaults.

    A loss that two methods both bring (APD brings KD) is built once, by the first that lists it
    explicitly."""
    for key in options:
        if key not in names:
            raise UserError(f"distill.options has an entry for {key!r}, which is not in distill.methods {names}")
    losses: dict[str, nn.Module] = {}
    merged: dict[str, float] = {}
    for name in sorted(names, key=lambda n: n != "kd"):  # an explicit kd wins over APD's built-in one
        if name not in METHODS:
            raise UserError(f"unknown distillation method {name!r}; available: {', '.join(METHODS)}")
        built, defaults = METHODS[name](ctx, options.get(name, {}))
        for key, loss in built.items():
            if key not in losses:
                losses[key] = loss
                merged[key] = defaults[key]
    merged.update(weights)
    return losses, merged
