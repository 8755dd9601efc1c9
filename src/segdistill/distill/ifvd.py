"""IFVD: intra-class feature variation distillation (Wang et al., ECCV 2020).

Per image and class, the centre is the mean of the (un-normalised) features at the class's pixels
(labels nearest-resized to the feature grid); every pixel's cosine similarity to its own class's
centre forms the intra-class feature-variation map, computed for the student and the teacher
separately (no channel matching needed), and the loss is the mean squared difference of the maps.
As in the reference (``utils/criterion.py``), an ignored pixel is its own centre (similarity 1 on both
sides): it adds zero error but counts in the mean. One batched matmul instead of a loop over all K
classes with full-size masks.
"""

from __future__ import annotations

import torch

from ..base.labels import IGNORE_INDEX
from .base import DistillLoss
from .common import check_same_grid, float32, one_hot_valid, resize_labels


def variation_map(feat: torch.Tensor, onehot: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``feat B x C x h x w``, ``onehot B x K x h x w`` -> ``B x h x w`` cosine of each pixel to its
    class centre in its image (1 where the pixel has no valid class)."""
    f = feat.flatten(2)  # B x C x hw
    m = onehot.flatten(2)  # B x K x hw
    counts = m.sum(dim=2, keepdim=True)  # B x K x 1
    centres = torch.bmm(m, f.transpose(1, 2)) / counts.clamp(min=1.0)  # B x K x C
    dots = (torch.bmm(centres, f) * m).sum(dim=1)  # B x hw: <f_p, centre of p's class>
    centre_norm = (centres.norm(dim=2, keepdim=True) * m).sum(dim=1)  # B x hw
    cos = dots / (f.norm(dim=1) * centre_norm).clamp(min=eps)
    valid = m.sum(dim=1) > 0
    return torch.where(valid, cos, torch.ones_like(cos)).view(feat.shape[0], *feat.shape[2:])


class IFVDLoss(DistillLoss):
    """``mean_{b,p} (s_student[b,p] - s_teacher[b,p])^2`` over ``B * h * w``.

    Inputs: features ``B x C_s x h x w`` and ``B x C_t x h x w`` (same grid), labels ``B x H x W``.
    Returns ``{"ifvd": scalar}``. Reference weight: 20 in the CIRKD codebase (``train_ifvd.sh``, with
    KD 1 and the adversarial term), 200 in the original release (with KD 10 'mean').
    """

    taps = ("feat",)
    terms = ("ifvd",)

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.ignore_index = ignore_index

    def forward(
        self, student_feat: torch.Tensor, teacher_feat: torch.Tensor, labels: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        check_same_grid("IFVD", student_feat, teacher_feat)
        with torch.autocast(device_type=student_feat.device.type, enabled=False):
            f_s = float32(student_feat)
            f_t = float32(teacher_feat.detach())
            grid_labels = resize_labels(labels, tuple(f_s.shape[-2:]))
            onehot = one_hot_valid(grid_labels, self.num_classes, self.ignore_index, f_s.dtype)
            loss = (variation_map(f_s, onehot) - variation_map(f_t, onehot)).pow(2).mean()
        return {"ifvd": loss}
