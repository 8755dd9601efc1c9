"""What one training step returns, and the pieces every task's step shares: the segmentation
cross-entropy and the backbone / head parameter groups."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .labels import IGNORE_INDEX
from .outputs import split_output


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
    """Cross-entropy on the main logits (+ ``aux_weight`` x the auxiliary logits when present; several
    auxiliaries are summed into ``aux_ce``). Any output :func:`~segdistill.base.outputs.split_output`
    reads; logits on a coarser grid are upsampled to the label size (bilinear, ``align_corners=False``,
    as the libraries upsample for inference and their own losses).

    A batch without a labelled pixel contributes 0 (torch's mean over no pixel is 0/0 = NaN): selected
    on the device, without a host sync; with labelled pixels the value and gradients are torch's own,
    bitwise."""
    logits, auxiliaries = split_output(output)
    size = labels.shape[-2:]
    labelled = (labels != ignore_index).any()

    def ce(x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        loss = F.cross_entropy(x.float(), labels, ignore_index=ignore_index)
        return torch.where(labelled, loss, torch.zeros_like(loss))

    terms = {"ce": ce(logits)}
    if auxiliaries and aux_weight > 0:
        terms["aux_ce"] = sum(aux_weight * ce(aux) for aux in auxiliaries)
    return terms


def split_param_groups(model: nn.Module, lr: float, head_lr_mult: float) -> list[dict]:
    """Backbone at ``lr``, everything else (heads, new modules) at ``lr * head_lr_mult``.

    Uses ``model.param_groups()`` when the model provides it (ours does); otherwise the parameters of
    the top-level modules named in :func:`backbone_prefixes` count as the backbone (torchvision and
    transformers ``backbone``, smp ``encoder``, a transformers model's base model, e.g. ``segformer``).
    A model with none of them trains wholly at ``lr`` (nothing in it is known to be new)."""
    if hasattr(model, "param_groups"):
        backbone, head = model.param_groups()
    else:
        prefixes = backbone_prefixes(model)
        backbone, head = [], []
        for name, param in model.named_parameters():
            (backbone if name.split(".")[0] in prefixes else head).append(param)
        if not backbone:
            backbone, head = head, []
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


def backbone_prefixes(model: nn.Module) -> set[str]:
    """Top-level module names that hold a pretrained-style backbone: ``backbone``, ``encoder`` and a
    transformers model's ``base_model_prefix`` (``segformer``, ``beit``, ``dpt``, ``mobilevit``)."""
    prefixes = {"backbone", "encoder"}
    base = getattr(model, "base_model_prefix", None)
    if isinstance(base, str) and base:
        prefixes.add(base)
    return {name for name, _ in model.named_children() if name in prefixes}


def distillation_param_groups(
    student: nn.Module, extra: list[nn.Parameter], lr: float, head_lr_mult: float
) -> list[dict]:
    """:func:`split_param_groups` of the student plus a ``distill`` group at the head's rate for
    ``extra``, the loss modules' student-side parameters (adapters, projectors), when there are any."""
    groups = split_param_groups(student, lr, head_lr_mult)
    if extra:
        groups.append({"params": extra, "lr": lr * head_lr_mult, "lr_mult": head_lr_mult, "name": "distill"})
    return groups
