"""The one interface the trainer drives (:class:`Task`), the order of a training step's optimizer
updates (:func:`optimizer_steps`, the only place that order is written), and plain supervised
training. The supervised task, the :class:`~segdistill.distill.Distiller` and the detection tasks
implement :class:`Task`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from ..base.labels import IGNORE_INDEX
from ..base.outputs import output_logits
from ..base.step import OwnStep, StepOutput, segmentation_losses, split_param_groups

__all__ = [
    "OwnStep",
    "StepOutput",
    "SupervisedTask",
    "Task",
    "optimizer_steps",
    "segmentation_losses",
    "split_param_groups",
    "train_step",
]


@runtime_checkable
class Task(Protocol):
    """What one training step computes and what it trains.

    ``task(*inputs) -> StepOutput``; ``student`` is the model being trained (evaluated, saved);
    ``param_groups`` are the student optimizer's groups; ``own_steps()`` the modules with their own
    optimizers, in order; ``trainable_state_dict`` everything trained besides the student."""

    student: nn.Module

    def __call__(self, *inputs: object) -> StepOutput: ...

    def param_groups(self, lr: float, head_lr_mult: float) -> list[dict]: ...

    def own_steps(self) -> list[OwnStep]: ...

    def trainable_state_dict(self) -> dict: ...

    def load_trainable_state_dict(self, state: dict) -> None: ...


def optimizer_steps(
    task: Task,
    out: StepOutput,
    student_step: Callable[[], None],
    own_step: Callable[[OwnStep, torch.Tensor], None],
) -> None:
    """One step's updates in their order: the own optimizers not ``after_student`` (APD's teacher
    adapter, as the release), then the student's optimizer, then the ``after_student`` ones (a
    discriminator, which the student's adversarial term back-propagates through)."""
    steps = task.own_steps()
    for step in steps:
        if not step.after_student:
            own_step(step, out.own_losses[step.term])
    student_step()
    for step in steps:
        if step.after_student:
            own_step(step, out.own_losses[step.term])


def own_step_is_active(term: torch.Tensor) -> bool:
    """As the APD release: no own step on a batch whose term is 0 (no valid pixel), so that Adam's
    momentum does not move the module on an empty batch."""
    return term.requires_grad and float(term.detach()) > 0.0


def train_step(task: Task, out: StepOutput, optimizer: torch.optim.Optimizer) -> None:
    """A complete single-process training step after ``out = task(*inputs)``: every optimizer in
    :func:`optimizer_steps`' order (the trainer adds DDP averaging, gradient scaling and the
    divergence guard around the same order)."""

    def student_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        out.total.backward()
        if getattr(task, "clips_gradients", False):
            task.clip_gradients()
        optimizer.step()

    def own_step(step: OwnStep, term: torch.Tensor) -> None:
        step.optimizer.zero_grad(set_to_none=True)
        if own_step_is_active(term):
            term.backward()
            step.optimizer.step()

    optimizer_steps(task, out, student_step, own_step)


class SupervisedTask(nn.Module):
    """Plain training: cross-entropy (ignore 255) + ``aux_weight`` x auxiliary cross-entropy."""

    def __init__(self, model: nn.Module, aux_weight: float = 0.4, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.student = model
        self.aux_weight = aux_weight
        self.ignore_index = ignore_index

    def own_steps(self) -> list[OwnStep]:
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
