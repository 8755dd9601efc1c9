"""Attention Transfer (Zagoruyko & Komodakis, "Paying More Attention to Attention", ICLR 2017), as
the CIRKD codebase runs it for segmentation (``losses/at.py``): on the head feature (channel counts
may differ), spatial attention ``a = normalize(vec(mean_c f^p))`` per image with p = 2, loss the mean
squared difference of the normalised maps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import DistillLoss
from .common import check_same_grid, float32


def attention_map(feat: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """``B x C x h x w`` -> ``B x hw``: the channel mean of ``|f|^p``, L2-normalised per image."""
    return F.normalize(feat.abs().pow(p).mean(dim=1).flatten(1), dim=1)


class ATLoss(DistillLoss):
    """``sum over taps of mean_{b,i} (a_s[b,i] - a_t[b,i])^2`` (mean over ``B * h * w``).

    ``taps``: the tap names to compare (default the head feature ``("feat",)``; backbone stages can be
    added as taps in ``distill.student_taps``/``teacher_taps``); each pair must share its grid.
    Returns ``{"at": scalar}``. Reference weight: 10000 (CIRKD ``train_at.sh``, with KD 1).
    """

    terms = ("at",)

    def __init__(self, taps: tuple[str, ...] | list[str] = ("feat",), p: float = 2.0) -> None:
        super().__init__()
        self.taps = tuple(taps)
        self.p = p

    def forward_taps(
        self, student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor], labels: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        return self.forward(*(student[t] for t in self.taps), teachers=[teacher[t] for t in self.taps])

    def forward(self, *students: torch.Tensor, teachers: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """``loss(f_s1, f_s2, ..., teachers=[f_t1, f_t2, ...])`` (one pair per tap)."""
        total = students[0].new_zeros((), dtype=torch.float32)
        with torch.autocast(device_type=students[0].device.type, enabled=False):
            for f_s, f_t in zip(students, teachers, strict=True):
                check_same_grid("AT", f_s, f_t)
                a_s = attention_map(float32(f_s), self.p)
                a_t = attention_map(float32(f_t.detach()), self.p)
                total = total + (a_s - a_t).pow(2).mean()
        return {"at": total}
