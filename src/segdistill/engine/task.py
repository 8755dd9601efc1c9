"""What one training step computes. The trainer only needs this interface, so plain training and
distillation share one loop: ``task(images, labels) -> StepOutput``, ``task.param_groups(lr, mult)``,
``task.extra_steps`` (modules with their own optimizers), ``task.student`` (the model being trained)."""

from __future__ import annotations

import torch
from torch import nn

from ..base.outputs import output_logits
from ..base.step import StepOutput, segmentation_losses, split_param_groups

__all__ = ["StepOutput", "SupervisedTask", "segmentation_losses", "split_param_groups"]


class SupervisedTask(nn.Module):
    """Plain training: cross-entropy (ignore 255) + ``aux_weight`` x auxiliary cross-entropy."""

    def __init__(self, model: nn.Module, aux_weight: float = 0.4, ignore_index: int = 255) -> None:
        super().__init__()
        self.student = model
        self.aux_weight = aux_weight
        self.ignore_index = ignore_index

    @property
    def extra_steps(self) -> list:
        return []

    def param_groups(self, lr: float, head_lr_mult: float) -> list[dict]:
        return split_param_groups(self.student, lr, head_lr_mult)

    def trainable_state_dict(self) -> dict:
        return {}

    def load_trainable_state_dict(self, state: dict) -> None:
        del state

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        output = self.student(images)
        terms = segmentation_losses(output, labels, self.aux_weight, self.ignore_index)
        return StepOutput(total=sum(terms.values()), losses=terms, logits=output_logits(output))
