"""MasKD's first stage: learning the receptive tokens on a frozen teacher (hunto/MasKD
``segmentation/train_mask_module.py``), as a trainer task, so the stage is saved and resumed like any run.

:class:`MaskedTeacher` is the "student" of the stage: the tokens (its only parameters and state) and the
frozen teacher, whose output it masks (``f * sum_n m_n`` on the tapped map, the teacher's logits as in
the release); evaluated, it is the masked teacher's prediction (the release tracks that mIoU).
:class:`TokenTask` is the trainer's task: the masked map's cross-entropy + ``dice_weight`` x the masks' Dice
diversity (:func:`~segdistill.distill.maskd.mask_learning_loss`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..base.step import StepOutput
from .maskd import ReceptiveTokens, mask_learning_loss
from .taps import TapRecorder, find_module


class MaskedTeacher(nn.Module):
    """Frozen ``teacher`` + trainable :class:`ReceptiveTokens` on its ``tap`` (``teacher_taps[tap]``).

    The teacher is held outside the module tree (not in ``state_dict``, ``parameters`` or ``train()``):
    checkpoints of the stage hold the tokens only, and the teacher stays in eval mode. ``forward(x B x 3 x H x W)``
    returns ``{"out": masked logits B x K x H x W}``; :meth:`masked_map` the tapped map and the masked logits at
    the tap's grid. With ``tap="feat"`` the teacher's classifier (``teacher_taps["logits"]``, frozen) turns the
    masked feature into logits."""

    def __init__(self, teacher: nn.Module, teacher_taps: dict[str, str], tap: str, channels: int, num_tokens: int):
        super().__init__()
        teacher.eval().requires_grad_(False)
        self.__dict__["teacher"] = teacher  # not a submodule: frozen, not saved
        self.tap = tap
        self.tokens = ReceptiveTokens(channels, num_tokens)
        self.__dict__["recorder"] = TapRecorder(teacher, {tap: teacher_taps[tap]}, "teacher")
        classifier = find_module(teacher, teacher_taps["logits"], "teacher") if tap == "feat" else None
        self.__dict__["classifier"] = classifier

    def teacher_map(self, images: torch.Tensor) -> torch.Tensor:
        """The tapped teacher map ``B x C x h x w`` (no graph)."""
        self.recorder.clear()
        with torch.no_grad():
            self.teacher(images)
        return self.recorder.collect()[self.tap]

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001, ANN202 - nn.Module's signature
        """Device, dtype and memory-format moves (``.to()``, ``.double()``, ...) reach the hidden teacher too."""
        self.teacher._apply(fn)
        return super()._apply(fn, recurse)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Without ``labels``: ``{"out": masked logits}``. With ``labels B x H x W``: the stage's terms
        ``{"maskd_task", "maskd_dice"}`` (:func:`~segdistill.distill.maskd.mask_learning_loss`), computed inside
        ``forward`` so that a DistributedDataParallel wrapper sees the tokens used (and averages their
        gradients over ranks)."""
        f = self.teacher_map(images)
        if labels is not None:
            return mask_learning_loss(self.tokens, f, labels, self.classifier)
        masks = self.tokens(f)
        logits = f.float() * masks.sum(dim=1, keepdim=True)
        if self.classifier is not None:
            logits = self.classifier(logits)
        return {"out": F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=True)}


class TokenTask(nn.Module):
    """The stage's trainer task: ``total = maskd_task + dice_weight * maskd_dice``; the tokens train at
    ``lr`` (one group, no head multiplier: the release's SGD over the mask module alone)."""

    def __init__(self, student: MaskedTeacher, dice_weight: float = 1.0) -> None:
        super().__init__()
        self.student = student  # under DDP, the trainer replaces it by its wrapper
        self.__dict__["tokens"] = student.tokens  # the trained parameters, whatever wraps the student
        self.dice_weight = dice_weight

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        terms = self.student(images, labels)
        losses = {"maskd_task": terms["maskd_task"], "maskd_dice": self.dice_weight * terms["maskd_dice"]}
        return StepOutput(total=sum(losses.values()), losses=losses)

    def param_groups(self, lr: float, head_lr_mult: float) -> list[dict]:
        return [{"params": list(self.tokens.parameters()), "lr": lr, "lr_mult": 1.0, "name": "tokens"}]

    def own_steps(self) -> list:
        return []

    def trainable_state_dict(self) -> dict:
        return {}

    def load_trainable_state_dict(self, state: dict) -> None:
        return None
