"""What one detection training step computes (the :class:`~segdistill.engine.trainer.Trainer`'s task
interface): plain training of a torchvision detector, and APD distillation between two detectors.

``task(images, targets)``: ``images`` a list of ``3 x H_i x W_i`` float tensors in [0, 1],
``targets`` a list of dicts (``boxes``, ``labels``, ``masks``); returns a
:class:`~segdistill.engine.task.StepOutput` whose ``losses`` are torchvision's (``loss_classifier``,
``loss_box_reg``, ``loss_objectness``, ``loss_rpn_box_reg``, ``loss_mask``) plus the weighted
distillation terms.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..base.step import OwnStep, StepOutput, distillation_param_groups
from ..engine.task import SupervisedTask
from ..errors import UserError
from .apd import DetectionAPDLoss, instance_label_map

RPN_LOSSES = ("loss_objectness", "loss_rpn_box_reg")  # torchvision's RPN terms


class DetectionSupervisedTask(SupervisedTask):
    """Plain training: the detector's own losses, summed (torchvision's recipe). The trainer
    interface (param groups, no extra modules) is :class:`~segdistill.engine.task.SupervisedTask`'s."""

    def forward(self, images: list[torch.Tensor], targets: list[dict]) -> StepOutput:
        losses = self.student(images, targets)
        return StepOutput(total=sum(losses.values()), losses=dict(losses))


class DetectionDistiller(nn.Module):
    """A frozen teacher detector, a student detector, and :class:`DetectionAPDLoss` on their FPNs.

    The student runs its own training forward (torchvision's ``GeneralizedRCNN.forward``, its
    losses unchanged), called as a whole so that a ``DistributedDataParallel`` wrapper around it
    sees every step; forward hooks on its ``transform`` and ``backbone`` keep the resized batch and
    the FPN levels. That one resize + normalisation feeds the teacher's backbone too, so both FPNs
    cover the same pixels; the teacher runs its backbone only, in eval mode, without gradients.
    ``weights``: ``apd`` (every APD term) or ``apd_kl`` / ``apd_align``."""

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        apd: DetectionAPDLoss,
        weights: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__()
        self.student = student
        self.teacher = teacher
        self.apd = apd
        self.weights = dict(weights or {})
        known = {"apd", "apd_kl", "apd_align"}
        for key in self.weights:
            if key not in known:
                raise UserError(f"distill.weights key {key!r} names no detection term ({', '.join(sorted(known))})")
        self.teacher.eval()
        self.teacher.requires_grad_(False)

    def train(self, mode: bool = True) -> DetectionDistiller:
        super().train(mode)
        self.teacher.eval()
        return self

    def _weight(self, term: str) -> float:
        return float(self.weights.get(term, self.weights.get("apd", 10.0)))

    def forward(self, images: list[torch.Tensor], targets: list[dict]) -> StepOutput:
        detector_losses, seen = self._student_forward(images, targets)
        image_list, resized = seen["transform"]
        features = seen["backbone"]
        with torch.no_grad():
            teacher_features = self.teacher.backbone(image_list.tensors)
        label_map = instance_label_map(
            resized, image_list.image_sizes, tuple(image_list.tensors.shape[-2:]), self.apd.target
        )
        terms = self.apd(features, teacher_features, label_map)
        # the RPN's terms first, then the RoI heads' (the order of the sum, kept from earlier releases)
        losses = {k: detector_losses[k] for k in RPN_LOSSES}
        losses.update((k, v) for k, v in detector_losses.items() if k not in RPN_LOSSES)
        for name in ("apd_kl", "apd_align"):
            losses[name] = self._weight(name) * terms[name]
        return StepOutput(
            total=sum(losses.values()), losses=losses, own_losses={"apd_teacher_ce": terms["apd_teacher_ce"]}
        )

    def _student_forward(self, images: list[torch.Tensor], targets: list[dict]) -> tuple[dict, dict]:
        """The student's training losses (through the DDP wrapper under torchrun) and what its
        ``transform`` (the resized ``ImageList`` and targets) and ``backbone`` (the FPN levels)
        returned during that call, kept by forward hooks that live for this call only."""
        detector = self.student.module if isinstance(self.student, DistributedDataParallel) else self.student
        seen: dict[str, object] = {}
        handles = [
            getattr(detector, name).register_forward_hook(
                lambda module, inputs, output, name=name: seen.__setitem__(name, output)
            )
            for name in ("transform", "backbone")
        ]
        try:
            losses = self.student(images, targets)
        finally:
            for handle in handles:
                handle.remove()
        return losses, seen

    # ---------------------------------------------------------------- trainer interface
    def own_steps(self) -> list[OwnStep]:
        return self.apd.own_steps()

    def param_groups(self, lr: float, head_lr_mult: float) -> list[dict]:
        return distillation_param_groups(self.student, self.apd.student_parameters(), lr, head_lr_mult)

    def trainable_state_dict(self) -> dict:
        return self.apd.state_dict()

    def load_trainable_state_dict(self, state: dict) -> None:
        self.apd.load_state_dict(state)
