"""FitNets-style feature hint (Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015), as the
CIRKD codebase runs it for segmentation (``losses/fitnet.py``): a 1x1 convolution without bias maps
the student's head feature to the teacher's width, trained jointly with the student, and the loss is
the mean squared error to the teacher's feature (single stage, no hint pre-training).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import DistillLoss
from .common import check_channels, check_same_grid, float32


class FitNetLoss(DistillLoss):
    """``mean((r(f_s) - f_t)^2)`` over ``B x C_t x h x w``; ``r`` = 1x1 conv ``C_s -> C_t`` (no bias).

    Inputs: student feature ``B x C_s x h x w``, teacher feature ``B x C_t x h x w`` (same grid).
    Returns ``{"fitnet": scalar}``. Reference weight: 10 (CIRKD ``train_fitnet.sh``, with KD 1).
    """

    taps = ("feat",)
    terms = ("fitnet",)

    def __init__(self, student_channels: int, teacher_channels: int) -> None:
        super().__init__()
        self.student_channels = student_channels
        self.teacher_channels = teacher_channels
        self.regressor = nn.Conv2d(student_channels, teacher_channels, 1, bias=False)

    def forward(
        self, student_feat: torch.Tensor, teacher_feat: torch.Tensor, labels: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        check_same_grid("FitNet", student_feat, teacher_feat)
        check_channels("FitNet", "student", self.student_channels, student_feat)
        check_channels("FitNet", "teacher", self.teacher_channels, teacher_feat)
        with torch.autocast(device_type=student_feat.device.type, enabled=False):
            hint = self.regressor(float32(student_feat))
            loss = F.mse_loss(hint, float32(teacher_feat.detach()))
        return {"fitnet": loss}
