"""What one training step returns, and the pieces every task's step shares: the segmentation
cross-entropy and the backbone / head parameter groups."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .labels import IGNORE_INDEX
from .outputs import output_logits


@dataclass
class StepOutput:
    total: torch.Tensor  # scalar, what the student's optimizer minimises
    losses: dict[str, torch.Tensor]  # named scalar terms (weighted), for logging and the divergence guard
    logits: torch.Tensor | None = None  # B x K x H x W student logits
    own_losses: dict[str, torch.Tensor] = field(default_factory=dict)  # terms that train own-optimizer modules


class OwnStep(NamedTuple):
    """A module trained by its own optimizer on its own term (APD's teacher adapter, a GAN
    discriminator): stepped before the student's optimizer step, or after it when ``after_student``."""

    term: str  # the key of StepOutput.own_losses that trains it
    module: nn.Module
    optimizer: torch.optim.Optimizer
    after_student: bool = False


def segmentation_losses(
    output: object, labels: torch.Tensor, aux_weight: float, ignore_index: int = IGNORE_INDEX
) -> dict[str, torch.Tensor]:
    """Cross-entropy on the main logits (+ ``aux_weight`` x the auxiliary logits when present).

    Logits are upsampled to the label size when needed (bilinear)."""
    logits = output_logits(output)
    size = labels.shape[-2:]

    def ce(x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return F.cross_entropy(x.float(), labels, ignore_index=ignore_index)

    terms = {"ce": ce(logits)}
    if isinstance(output, dict) and output.get("aux") is not None and aux_weight > 0:
        terms["aux_ce"] = aux_weight * ce(output["aux"])
    return terms


def split_param_groups(model: nn.Module, lr: float, head_lr_mult: float) -> list[dict]:
    """Backbone at ``lr``, everything else (heads, new modules) at ``lr * head_lr_mult``.

    Uses ``model.param_groups()`` when the model provides it (ours does); otherwise parameters whose
    name starts with ``backbone``/``encoder`` count as the backbone (torchvision, smp)."""
    if hasattr(model, "param_groups"):
        backbone, head = model.param_groups()
    else:
        backbone, head = [], []
        for name, param in model.named_parameters():
            (backbone if name.split(".")[0] in ("backbone", "encoder") else head).append(param)
    groups = [
        {"params": [p for p in backbone if p.requires_grad], "lr": lr, "lr_mult": 1.0, "name": "backbone"},
        {
            "params": [p for p in head if p.requires_grad],
            "lr": lr * head_lr_mult,
            "lr_mult": head_lr_mult,
            "name": "head",
        },
    ]
    return [g for g in groups if g["params"]]


def distillation_param_groups(
    student: nn.Module, extra: list[nn.Parameter], lr: float, head_lr_mult: float
) -> list[dict]:
    """:func:`split_param_groups` of the student plus a ``distill`` group at the head's rate for
    ``extra``, the loss modules' student-side parameters (adapters, projectors), when there are any."""
    groups = split_param_groups(student, lr, head_lr_mult)
    if extra:
        groups.append({"params": extra, "lr": lr * head_lr_mult, "lr_mult": head_lr_mult, "name": "distill"})
    return groups
