"""SKD: structured knowledge distillation (Liu et al., CVPR 2019 / TPAMI 2020), the pair-wise part.

Pixel-wise SKD is logit KD at feature resolution (:class:`~segdistill.distill.kd.KDLoss` with
``upsample=False``) and holistic SKD is the adversarial term of
:mod:`segdistill.distill.adversarial`; the ``skd`` method combines the three.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import DistillLoss
from .common import check_same_grid, float32


def pair_affinity(feat: torch.Tensor, pool: int) -> torch.Tensor:
    """``B x C x h x w`` -> ``B x N x N`` cosine affinities of the ``N`` nodes left after a
    ``pool x pool`` max pooling (stride ``pool``, ceil mode)."""
    if pool > 1:
        feat = F.max_pool2d(feat, kernel_size=pool, stride=pool, ceil_mode=True)
    nodes = F.normalize(feat.flatten(2), dim=1)  # B x C x N
    return torch.bmm(nodes.transpose(1, 2), nodes)


class PairwiseLoss(DistillLoss):
    """``mean_{b,i,j} (a_s[b,i,j] - a_t[b,i,j])^2`` over ``B * N^2`` pixel-pair affinities.

    Input: head features ``B x C x h x w`` of both models (channels may differ, same grid). Nodes as
    the CIRKD codebase (``losses/skd.py``): 2x2 max pooling, ceil mode, so a 64 x 128 Cityscapes map
    gives N = 2048 nodes (a 2048 x 2048 matrix per image, 16 MB in float32), instead of the 67M-entry
    full-resolution matrix. (The original SKD release pools to a fixed fraction of the map,
    ``--pool-scale 0.5``; give ``pool`` accordingly.) Returns ``{"skd_pa": scalar}``.
    Reference weight: 10 (CIRKD ``train_skd.sh``); the original release uses 0.5 with its coarser nodes.
    """

    taps = ("feat",)
    terms = ("skd_pa",)

    def __init__(self, pool: int = 2) -> None:
        super().__init__()
        self.pool = pool

    def forward(
        self, student_feat: torch.Tensor, teacher_feat: torch.Tensor, labels: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        check_same_grid("SKD pair-wise", student_feat, teacher_feat)
        with torch.autocast(device_type=student_feat.device.type, enabled=False):
            a_s = pair_affinity(float32(student_feat), self.pool)
            a_t = pair_affinity(float32(teacher_feat.detach()), self.pool)
            loss = (a_s - a_t).pow(2).mean()
        return {"skd_pa": loss}
