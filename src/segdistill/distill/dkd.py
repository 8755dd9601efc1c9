"""Decoupled Knowledge Distillation (Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022), applied to
every labelled pixel of a segmentation map.

Reference: megvii-research/mdistiller @ a08d46f, ``mdistiller/distillers/DKD.py`` (``dkd_loss``, lines 8-32).
Per pixel with ground-truth class ``c`` and softened probabilities ``p = softmax(z / T)``:

* TCKD: ``KL(b_t || b_s)`` of the binary ``b = [p_c, 1 - p_c]`` (``1 - p_c`` as the sum of the other
  classes' probabilities);
* NCKD: ``KL(q_t || q_s)`` with ``q = softmax(z / T - 1000 * onehot(c))``, the distribution over the
  non-target classes (the target logit pushed down by 1000 as the reference does);

both times ``T^2``. Segmentation reading (as ZaberKo/seg-gdkd ``losses/distiller/dkd.py``): labels are
resized (nearest) to the logits' grid, ignored pixels are left out, and the sums are divided by the number
of valid pixels (the reference's ``batchmean`` with pixels as the samples).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import UserError
from .base import DistillLoss
from .common import float32, resize_labels
from .logit_std import standardize as standardize_logits

NCKD_MASK = 1000.0  # the reference's ``1000.0 * gt_mask``


def _split(
    z: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor, target: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``log p_c``, ``log sum_{k != c} p_k`` (``B x 1 x h x w``) and the non-target log-distribution
    ``log_softmax(z / T - 1000 * onehot(c))`` (``B x K x h x w``) of ``p = softmax(z / T)``."""
    scaled = z / temperature
    log_p = F.log_softmax(scaled, dim=1)
    # log space: the reference takes log() of the summed probabilities, -inf once they underflow
    log_target = log_p.gather(1, target)
    log_other = torch.logsumexp(log_p.masked_fill(gt, float("-inf")), dim=1, keepdim=True)
    return log_target, log_other, F.log_softmax(scaled - mask, dim=1)


def dkd_pixel_terms(
    z_s: torch.Tensor, z_t: torch.Tensor, labels: torch.Tensor, temperature: float, ignore_index: int = 255
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sums over the valid pixels of the per-pixel TCKD and NCKD (``T^2`` not applied) and the number of
    valid pixels. ``z_s``, ``z_t``: ``B x K x h x w`` logits (``z_t`` gets no gradient), ``labels``:
    ``B x h x w`` on the same grid; labels outside ``[0, K)`` or equal to ``ignore_index`` are invalid."""
    k = z_s.shape[1]
    valid = (labels >= 0) & (labels < k) & (labels != ignore_index)  # B x h x w
    target = torch.where(valid, labels, torch.zeros_like(labels))[:, None]  # B x 1 x h x w
    gt = torch.zeros(z_s.shape, dtype=torch.bool, device=z_s.device).scatter_(1, target, True)
    mask = gt.to(z_s.dtype) * NCKD_MASK
    with torch.no_grad():  # the teacher's side first, so that only its outputs stay alive
        t_c, t_o, log_q_t = _split(z_t.detach(), gt, mask, target, temperature)
    s_c, s_o, log_q_s = _split(z_s, gt, mask, target, temperature)
    del gt, mask
    tckd = (t_c.exp() * (t_c - s_c) + t_o.exp() * (t_o - s_o))[:, 0]  # B x h x w
    nckd = (log_q_t.exp() * (log_q_t - log_q_s)).sum(dim=1)  # B x h x w
    weight = valid.to(tckd.dtype)
    return (tckd * weight).sum(), (nckd * weight).sum(), valid.sum()


class DKDLoss(DistillLoss):
    """``alpha * TCKD + beta * NCKD`` per valid pixel, times ``T^2``, averaged over the valid pixels.

    Inputs: logits ``B x K x h x w`` (student and teacher, teacher detached; a teacher on another grid is
    resized bilinearly, align_corners=True) and labels ``B x H x W`` (``ignore_index`` = ignored).
    ``upsample=False`` (default): labels go to the logits' grid by nearest resize; ``True``: both logits
    are upsampled bilinearly (align_corners=True) to ``H x W``, as :class:`~segdistill.distill.kd.KDLoss`
    (62x the pixels at a 713 crop with stride 8). ``standardize=True`` z-scores both logits over the
    classes at every pixel before ``/ T`` (logit standardisation; that reference runs DKD+LS with T=2
    and alpha, beta multiplied by 9). A batch with no valid pixel gives 0.

    Defaults alpha=1, beta=2, T=1: the only segmentation setting found (seg-gdkd ``DKD``); mdistiller's
    CIFAR-100 default is alpha=1, beta=8, T=4, its ImageNet configs alpha=1, beta=0.5 or 2, T=1. The
    reference's warm-up factor ``min(epoch / 20, 1)`` is not part of the loss.

    Returns ``{"dkd_tckd": alpha * T^2 * mean TCKD, "dkd_nckd": beta * T^2 * mean NCKD}`` (their sum is
    the reference's DKD loss).
    """

    taps = ("logits",)
    terms = ("dkd_tckd", "dkd_nckd")

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 2.0,
        temperature: float = 1.0,
        upsample: bool = False,
        standardize: bool = False,
        ignore_index: int = 255,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise UserError(f"DKD temperature must be positive, got {temperature}")
        self.alpha, self.beta, self.temperature = alpha, beta, temperature
        self.upsample, self.standardize, self.ignore_index = upsample, standardize, ignore_index

    def forward(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        if student_logits.shape[1] != teacher_logits.shape[1]:
            raise UserError(
                f"DKD needs the same number of classes in both models: student {student_logits.shape[1]}, "
                f"teacher {teacher_logits.shape[1]}"
            )
        if student_logits.shape[1] < 2:
            raise UserError(f"DKD needs at least 2 classes, got {student_logits.shape[1]}")
        if labels is None:
            raise UserError("DKD needs the labels (it splits each pixel's classes into target and non-target)")
        with torch.autocast(device_type=student_logits.device.type, enabled=False):
            z_s = float32(student_logits)
            z_t = float32(teacher_logits.detach())
            size = tuple(labels.shape[-2:]) if self.upsample else tuple(z_s.shape[-2:])
            if tuple(z_s.shape[-2:]) != size:
                z_s = F.interpolate(z_s, size=size, mode="bilinear", align_corners=True)
            if tuple(z_t.shape[-2:]) != size:
                z_t = F.interpolate(z_t, size=size, mode="bilinear", align_corners=True)
            if self.standardize:
                z_s, z_t = standardize_logits(z_s), standardize_logits(z_t)
            target = resize_labels(labels, size).to(device=z_s.device, dtype=torch.long)
            tckd, nckd, count = dkd_pixel_terms(z_s, z_t, target, self.temperature, self.ignore_index)
            scale = self.temperature**2 / count.clamp(min=1).to(tckd.dtype)
        return {"dkd_tckd": self.alpha * tckd * scale, "dkd_nckd": self.beta * nckd * scale}
