"""DIST (Huang et al., "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022), as its
segmentation code runs it (``segmentation/losses/dist_kd.py``): class probabilities of every pixel of
the batch, matched by Pearson correlation across classes (inter-class relation, per pixel) and across
pixels (intra-class relation, per class). It replaces logit KD.
"""

from __future__ import annotations

import torch

from .base import DistillLoss
from .common import check_same_grid, float32
from .logit_std import standardize as standardize_logits


def pearson(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Row-wise Pearson correlation of two ``M x N`` matrices: cosine of the centred rows (``M``)."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)  # eps added, as DIST_KD


def dist_relation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float = 1.0, gamma: float = 1.0, tau: float = 1.0
) -> torch.Tensor:
    """``tau^2 * (beta * (1 - mean_pixels rho_K) + gamma * (1 - mean_classes rho_M))`` on ``B x K x h x w``
    logits; probabilities ``softmax(z / tau)`` over classes, all ``M = B*h*w`` pixels (no ignore mask)."""
    k = student_logits.shape[1]
    p_s = (student_logits / tau).softmax(dim=1).permute(0, 2, 3, 1).reshape(-1, k)  # M x K
    p_t = (teacher_logits / tau).softmax(dim=1).permute(0, 2, 3, 1).reshape(-1, k)
    inter = 1.0 - pearson(p_s, p_t).mean()
    intra = 1.0 - pearson(p_s.t(), p_t.t()).mean()
    return tau**2 * (beta * inter + gamma * intra)


class DISTLoss(DistillLoss):
    """``L(main logits) + aux_weight * L(aux logits)``, ``L`` = :func:`dist_relation_loss`.

    Inputs ``B x K x h x w`` logits (teacher detached, same grid). Reference: beta = gamma = 1, tau = 1,
    aux weight 0.4, loss weight 1 (DIST_KD ``segmentation/train_kd.py``). ``aux_weight > 0`` reads the
    ``aux_logits`` tap of both models. ``standardize=True`` z-scores both models' logits over the
    classes at every pixel before ``/ tau`` (:func:`~segdistill.distill.logit_std.standardize`; our
    extension: the logit-standardisation reference applies it to KD, DKD, CTKD and MLKD, not to DIST).
    Returns ``{"dist": scalar}``.
    """

    terms = ("dist",)

    def __init__(
        self,
        beta: float = 1.0,
        gamma: float = 1.0,
        tau: float = 1.0,
        aux_weight: float = 0.4,
        standardize: bool = False,
    ) -> None:
        super().__init__()
        self.beta, self.gamma, self.tau, self.aux_weight = beta, gamma, tau, aux_weight
        self.standardize = standardize
        self.taps = ("logits", "aux_logits") if aux_weight > 0 else ("logits",)

    def _one(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        check_same_grid("DIST", s, t)
        z_s, z_t = float32(s), float32(t.detach())
        if self.standardize:
            z_s, z_t = standardize_logits(z_s), standardize_logits(z_t)
        return dist_relation_loss(z_s, z_t, self.beta, self.gamma, self.tau)

    def forward_taps(
        self, student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor], labels: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        with torch.autocast(device_type=student["logits"].device.type, enabled=False):
            loss = self._one(student["logits"], teacher["logits"])
            if self.aux_weight > 0:
                loss = loss + self.aux_weight * self._one(student["aux_logits"], teacher["aux_logits"])
        return {"dist": loss}

    def forward(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Main logits only (the aux pair goes through :meth:`forward_taps`)."""
        with torch.autocast(device_type=student_logits.device.type, enabled=False):
            return {"dist": self._one(student_logits, teacher_logits)}
