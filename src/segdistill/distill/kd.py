"""Pixel-wise logit distillation (Hinton et al., "Distilling the Knowledge in a Neural Network", 2015)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import UserError
from .base import DistillLoss
from .common import float32
from .logit_std import standardize as standardize_logits

REDUCTIONS = ("mean", "pixel")


class KDLoss(DistillLoss):
    """``T^2 * KL(softmax(z_t / T) || softmax(z_s / T))`` per pixel, teacher detached.

    Inputs: logits ``B x K x h x w`` (student and teacher; the teacher is resized to the student's
    grid if it differs) and ``labels B x H x W``; both logits are upsampled bilinearly
    (align_corners=True) to ``H x W`` as in the APD release.

    ``reduction="mean"`` (default, the release): the sum over all elements divided by ``B*K*H*W``
    (torch ``KLDivLoss`` 'mean'), i.e. the per-pixel KL divided by K. ``reduction="pixel"``: the
    per-pixel KL (summed over classes) averaged over pixels, K times larger. Release weight: 10, T=1.

    ``standardize=True``: both logits are z-scored over the classes at every pixel (after the resize,
    before the temperature; :func:`~segdistill.distill.logit_std.standardize`, Sun et al. CVPR 2024).
    That reference runs KD+LS with T=2 and weight 9 on the per-sample KL (our ``reduction="pixel"``).
    Returns ``{"kd": scalar}``.
    """

    taps = ("logits",)
    terms = ("kd",)

    def __init__(
        self, temperature: float = 1.0, reduction: str = "mean", upsample: bool = True, standardize: bool = False
    ) -> None:
        super().__init__()
        if reduction not in REDUCTIONS:
            raise UserError(f"KD reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
        if temperature <= 0:
            raise UserError(f"KD temperature must be positive, got {temperature}")
        self.temperature = temperature
        self.reduction = reduction
        self.upsample = upsample
        self.standardize = standardize

    def forward(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        if student_logits.shape[1] != teacher_logits.shape[1]:
            raise UserError(
                f"KD needs the same number of classes in both models: student {student_logits.shape[1]}, "
                f"teacher {teacher_logits.shape[1]}"
            )
        with torch.autocast(device_type=student_logits.device.type, enabled=False):
            z_s = float32(student_logits)
            z_t = float32(teacher_logits.detach())
            size = tuple(labels.shape[-2:]) if (self.upsample and labels is not None) else tuple(z_s.shape[-2:])
            if tuple(z_s.shape[-2:]) != size:
                z_s = F.interpolate(z_s, size=size, mode="bilinear", align_corners=True)
            if tuple(z_t.shape[-2:]) != size:
                z_t = F.interpolate(z_t, size=size, mode="bilinear", align_corners=True)
            if self.standardize:
                z_s, z_t = standardize_logits(z_s), standardize_logits(z_t)
            temp = self.temperature
            log_q = F.log_softmax(z_s / temp, dim=1)
            log_p = F.log_softmax(z_t / temp, dim=1)
            kl = (log_p.exp() * (log_p - log_q)).sum(dim=1)  # B x H x W
            loss = kl.mean() if self.reduction == "pixel" else kl.mean() / z_s.shape[1]
        return {"kd": loss * temp * temp}
