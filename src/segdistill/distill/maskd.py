"""Masked distillation with receptive tokens (Huang et al., "Masked Distillation with Receptive Tokens",
ICLR 2023), as the authors' segmentation release runs it (hunto/MasKD ``segmentation/``: ``losses/maskd.py``,
``train_mask_module.py``, ``train_maskd.py``; see docs/baselines-2024.md).

Two stages:

1. **Mask learning** (teacher frozen): ``N`` learnable receptive tokens ``T N x C`` give soft masks
   ``m_n = sigmoid(T_n . f)`` over the teacher's map ``f B x C x h x w`` (:class:`ReceptiveTokens`). The tokens
   are trained by the teacher's task loss on the masked map ``f * sum_n m_n`` plus a Dice "diversity" term
   between the masks (:func:`mask_learning_loss`). The release masks the teacher's **logits** (``C = K = 19``,
   8 tokens): the masked map is itself a prediction, cross-entropy against the labels; with a feature map the
   teacher's (frozen) classifier turns it into logits.
2. **Masked distillation** (tokens frozen, :class:`MasKDLoss`): for every mask, the squared student/teacher
   difference weighted by ``m^2`` (both maps are multiplied by the mask), summed over positions and divided by
   the mask's area: ``0.5 * mean_{b,n,c} sum_p m_{bnp}^2 (s_{bcp} - t_{bcp})^2 / (sum_p m_{bnp} + 1e-5)``. The
   release applies it to the main logits and, with weight 0.4, to the auxiliary logits (same tokens).

Memory: nothing of size ``B x N x C x h x w`` is formed: the masked-sum map is ``f * sum_n m_n`` and the
per-mask sums are one batched matmul of ``m^2`` (``B x N x hw``) with ``(s - t)^2`` (``B x hw x C``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..base.labels import IGNORE_INDEX
from ..errors import UserError
from .base import DistillLoss
from .common import check_channels, check_same_grid, float32

TAPS = ("logits", "feat")


class ReceptiveTokens(nn.Module):
    """``num_tokens`` learnable tokens ``N x C`` (``mask_token``, initialised N(0, 0.01^2) as the release; the
    name matches the release's mask-module checkpoints). ``forward(f B x C x h x w) -> masks B x N x h x w``,
    ``sigmoid(T @ f)`` per position, in float32 (float64 kept)."""

    def __init__(self, channels: int, num_tokens: int = 8) -> None:
        super().__init__()
        if channels < 1 or num_tokens < 1:
            raise UserError(f"receptive tokens need positive channels and tokens, got {channels} and {num_tokens}")
        self.channels = channels
        self.num_tokens = num_tokens
        self.mask_token = nn.Parameter(torch.randn(num_tokens, channels) * 0.01)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        check_channels("MasKD receptive tokens", "feature", self.channels, feat)
        with torch.autocast(device_type=feat.device.type, enabled=False):
            f = float32(feat)
            b, c, h, w = f.shape
            attn = torch.matmul(self.mask_token.to(f.dtype), f.reshape(b, c, h * w))  # B x N x hw
        return attn.sigmoid().view(b, self.num_tokens, h, w)


def dice_diversity(masks: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Mean over images and ordered pairs ``i != j`` of the Dice coefficient of two masks,
    ``2 <m_i, m_j> / (|m_i|^2 + |m_j|^2 + 2 eps)`` (sums over positions); ``masks B x N x h x w``. Minimised in
    stage 1 to keep the masks apart. 0 for a single token."""
    b, n = masks.shape[:2]
    if n < 2:
        return masks.sum() * 0
    m = masks.reshape(b, n, -1)
    inner = torch.bmm(m, m.transpose(1, 2))  # B x N x N
    sq = torch.diagonal(inner, dim1=1, dim2=2)  # B x N
    dice = 2 * inner / (sq[:, :, None] + sq[:, None, :] + 2 * eps)
    off = 1.0 - torch.eye(n, dtype=dice.dtype, device=dice.device)
    return (dice * off).sum() / (b * n * (n - 1))


def mask_learning_loss(
    tokens: ReceptiveTokens,
    teacher_map: torch.Tensor,
    labels: torch.Tensor,
    classifier: nn.Module | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> dict[str, torch.Tensor]:
    """Stage 1: ``{"maskd_task": CE, "maskd_dice": Dice diversity}`` (the release sums them, weights 1 and 1).

    ``teacher_map B x C x h x w`` (detached here: the teacher is frozen), ``labels B x H x W`` (ignore 255).
    The masked map ``f * sum_n m_n`` (``m`` = ``tokens(f)``) is passed through ``classifier`` (the teacher's
    frozen final classifier when ``f`` is a feature; ``None`` when ``f`` is the logits, the release), upsampled
    bilinearly (align_corners=True) to ``H x W`` and scored by cross-entropy averaged over the valid pixels (0
    when none is). Gradients reach the tokens only (and the classifier's parameters if they require grad).
    """
    with torch.autocast(device_type=teacher_map.device.type, enabled=False):
        f = float32(teacher_map.detach())
        masks = tokens(f)
        logits = f * masks.sum(dim=1, keepdim=True)
        if classifier is not None:
            logits = classifier(logits)
        if tuple(logits.shape[-2:]) != tuple(labels.shape[-2:]):
            logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=True)
        ce = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="sum")
        ce = ce / (labels != ignore_index).sum().clamp(min=1)
        return {"maskd_task": ce, "maskd_dice": dice_diversity(masks)}


def masked_mse(student: torch.Tensor, teacher: torch.Tensor, masks: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``0.5 * mean_{b,n,c} sum_p m_{bnp}^2 (s_{bcp} - t_{bcp})^2 / (sum_p m_{bnp} + eps)``; maps ``B x C x h x w``,
    masks ``B x N x h x w``."""
    b, c = student.shape[:2]
    n = masks.shape[1]
    diff2 = (student - teacher).pow(2).reshape(b, c, -1)  # B x C x hw
    m = masks.reshape(b, n, -1)
    per_mask = torch.bmm(m.pow(2), diff2.transpose(1, 2))  # B x N x C
    return 0.5 * (per_mask / (m.sum(dim=2, keepdim=True) + eps)).mean()


class MasKDLoss(DistillLoss):
    """Stage 2: masked distillation with frozen receptive tokens (module docstring).

    ``MasKDLoss(channels, num_tokens=8, *, tokens=None, tap="logits", aux_weight=0.4, student_channels=None)``.
    ``channels``: the teacher map's channels (K for logits); ``tokens``: trained :class:`ReceptiveTokens` (their
    values are copied; otherwise load them with :meth:`load_tokens` or a state dict before training). The tokens
    are frozen: no gradient, not in :meth:`student_parameters`, saved with the loss's state. The masks come from
    the teacher's map. ``tap="logits"`` (the release): main logits, plus ``aux_weight`` times the same on the
    ``aux_logits`` tap when ``aux_weight > 0`` (release 0.4). ``tap="feat"``: the head's penultimate feature;
    ``student_channels != channels`` adds a 1x1 conv (no bias) aligning the student (our extension, trained with
    the student). Returns ``{"maskd": scalar}`` (release weight 1, ``--lambda-kd``).
    """

    terms = ("maskd",)

    def __init__(
        self,
        channels: int,
        num_tokens: int = 8,
        *,
        tokens: ReceptiveTokens | None = None,
        tap: str = "logits",
        aux_weight: float = 0.4,
        student_channels: int | None = None,
    ) -> None:
        super().__init__()
        if tap not in TAPS:
            raise UserError(f"MasKD tap must be one of {', '.join(TAPS)}, got {tap!r}")
        if aux_weight < 0:
            raise UserError(f"MasKD aux_weight must be non-negative, got {aux_weight}")
        if tap == "feat" and aux_weight > 0:
            raise UserError("MasKD's auxiliary term applies to logits only: set aux_weight=0 with tap='feat'")
        if tap == "logits" and student_channels not in (None, channels):
            raise UserError(f"MasKD on logits needs the same classes in both models: {student_channels} != {channels}")
        self.channels = channels
        self.tap = tap
        self.aux_weight = aux_weight
        self.taps = (tap, "aux_logits") if aux_weight > 0 else (tap,)
        self.tokens = ReceptiveTokens(channels, num_tokens)
        if tokens is not None:
            self.load_tokens(tokens)
        self.tokens.requires_grad_(False)
        s_ch = channels if student_channels is None else student_channels
        self.align = nn.Conv2d(s_ch, channels, 1, bias=False) if s_ch != channels else None

    def load_tokens(self, tokens: ReceptiveTokens | dict[str, torch.Tensor]) -> None:
        """Copy trained tokens (a :class:`ReceptiveTokens` or its state dict, e.g. the release's mask-module
        checkpoint ``{"mask_token": N x C}``) into the frozen tokens."""
        state = tokens.state_dict() if isinstance(tokens, nn.Module) else tokens
        value = state["mask_token"]
        if tuple(value.shape) != tuple(self.tokens.mask_token.shape):
            raise UserError(
                f"MasKD was built for {tuple(self.tokens.mask_token.shape)} tokens (N x C), got {tuple(value.shape)}"
            )
        with torch.no_grad():
            self.tokens.mask_token.copy_(value)

    def _one(self, student: torch.Tensor, teacher: torch.Tensor, align: nn.Module | None) -> torch.Tensor:
        check_same_grid("MasKD", student, teacher)
        t = float32(teacher.detach())
        with torch.no_grad():
            masks = self.tokens(t)
        s = float32(student)
        if align is not None:
            s = align(s)
        check_channels("MasKD", "student", self.channels, s)
        return masked_mse(s, t, masks.to(s.dtype))

    def forward_taps(
        self, student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor], labels: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        with torch.autocast(device_type=student[self.tap].device.type, enabled=False):
            loss = self._one(student[self.tap], teacher[self.tap], self.align)
            if self.aux_weight > 0:
                loss = loss + self.aux_weight * self._one(student["aux_logits"], teacher["aux_logits"], None)
        return {"maskd": loss}

    def forward(
        self, student_map: torch.Tensor, teacher_map: torch.Tensor, labels: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """The main pair only (the auxiliary pair goes through :meth:`forward_taps`)."""
        with torch.autocast(device_type=student_map.device.type, enabled=False):
            return {"maskd": self._one(student_map, teacher_map, self.align)}
