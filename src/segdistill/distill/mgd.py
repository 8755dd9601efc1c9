"""Masked Generative Distillation (Yang et al., "Masked Generative Distillation", ECCV 2022), as its
segmentation release runs it (yzd-v/MGD ``seg/mmseg/distillation/losses/mgd.py``, configs
``seg/configs/distillers/mgd/*_city.py``; the same function as mmrazor's ``MGDConncetor`` + ``MGDLoss``).

The student's feature is aligned to the teacher's width (1x1 conv with bias, only when the widths
differ), a random set of spatial positions is zeroed (each position independently with probability
``mask_ratio``, the same positions in every channel), a generation block (3x3 conv, ReLU, 3x3 conv, with
biases) regenerates the full map, and the loss is the squared error to the teacher's feature summed over
all elements and divided by the batch size. The release distils the backbone's last stage (mmseg
``extract_feat(img)[-1]``: 512 channels for ResNet-18, 2048 for ResNet-101) and adds channel-wise
distillation on the logits (T = 4, weight 3); see docs/baselines-2024.md.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError
from .base import DistillLoss
from .common import check_channels, check_same_grid, float32


def random_keep_mask(
    batch: int, height: int, width: int, mask_ratio: float, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """``B x 1 x h x w`` of 0 (masked, probability ``mask_ratio``) and 1 (kept), drawn from torch's global
    RNG on ``device``: a uniform ``u`` per position is masked when ``u > 1 - mask_ratio`` (the release's
    rule), so the run is reproducible under ``torch.manual_seed``."""
    u = torch.rand(batch, 1, height, width, device=device)
    return (u <= 1.0 - mask_ratio).to(dtype)


def check_mask(name: str, mask: torch.Tensor, feat: torch.Tensor) -> None:
    expected = (feat.shape[0], 1, *feat.shape[-2:])
    if tuple(mask.shape) != expected:
        raise UserError(f"{name}: a given mask must be {expected} (B x 1 x h x w), got {tuple(mask.shape)}")


def generation_block(channels: int) -> nn.Sequential:
    """3x3 conv, ReLU, 3x3 conv (``channels -> channels``, padding 1, with biases)."""
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(channels, channels, 3, padding=1),
    )


class MGDLoss(DistillLoss):
    """``(1 / B) * sum (G(M * a(f_s)) - f_t)^2`` over ``B x C_t x h x w``.

    ``a``: 1x1 conv ``C_s -> C_t`` with bias (``None``, the identity, when ``C_s == C_t``); ``M``: a
    ``B x 1 x h x w`` keep-mask (0 with probability ``mask_ratio``), drawn anew at every call from torch's
    global RNG unless ``mask`` is given; ``G``: :func:`generation_block`. ``align`` and ``generation`` are
    trained by the student's optimizer. Inputs: student feature ``B x C_s x h x w``, teacher feature
    ``B x C_t x h x w`` (same grid; detached here). Returns ``{"mgd": scalar}`` (unweighted).

    Release (Cityscapes, PSPNet/DeepLabV3-R18 students, PSPNet-R101 teacher): ``alpha_mgd`` = 2e-5 (the
    term's weight), ``lambda_mgd`` = 0.75 (``mask_ratio``), plus CWD on logits (T = 4, weight 3).
    """

    taps = ("feat",)
    terms = ("mgd",)

    def __init__(self, student_channels: int, teacher_channels: int, mask_ratio: float = 0.75) -> None:
        super().__init__()
        if not 0.0 <= mask_ratio < 1.0:
            raise UserError(f"MGD mask_ratio must be in [0, 1), got {mask_ratio}")
        self.student_channels = student_channels
        self.teacher_channels = teacher_channels
        self.mask_ratio = mask_ratio
        self.align = nn.Conv2d(student_channels, teacher_channels, 1) if student_channels != teacher_channels else None
        self.generation = generation_block(teacher_channels)

    def forward(
        self,
        student_feat: torch.Tensor,
        teacher_feat: torch.Tensor,
        labels: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """``mask`` (``B x 1 x h x w``, 1 = kept): replaces the random draw (tests)."""
        check_same_grid("MGD", student_feat, teacher_feat)
        check_channels("MGD", "student", self.student_channels, student_feat)
        check_channels("MGD", "teacher", self.teacher_channels, teacher_feat)
        with torch.autocast(device_type=student_feat.device.type, enabled=False):
            f_s = float32(student_feat)
            f_t = float32(teacher_feat.detach())
            if self.align is not None:
                f_s = self.align(f_s)
            b, _, h, w = f_s.shape
            if mask is None:
                mask = random_keep_mask(b, h, w, self.mask_ratio, f_s.device, f_s.dtype)
            else:
                check_mask("MGD", mask, f_s)
            generated = self.generation(f_s * mask.to(f_s.dtype))
            loss = (generated - f_t).pow(2).sum() / b
        return {"mgd": loss}
