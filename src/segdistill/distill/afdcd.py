"""Augmentation-free Dense Contrastive Distillation (Fan et al., "Augmentation-free Dense Contrastive
Knowledge Distillation for Efficient Semantic Segmentation", NeurIPS 2023), as its release runs it
(OSVAI/Af-DCD ``losses/ocmgd.py`` ``OmniContrastiveFeatureLoss``, ``train_ocmgd.py``,
``train_scripts/cityscape/*_ocmgd.sh``).

Two terms on one generated map ``g = P(M * a(f_s))`` (``a``: 1x1 align conv; ``M``: a spatial mask;
``P``: a projector, 3x3 conv, ReLU, 3x3 conv, or the "enhanced" two-branch one):

* ``afdcd_fd`` (masked feature mimicking): ``(1 / B) * sum (g - f_t)^2``, as MGD;
* ``afdcd_ctr`` (omni-contrastive): ``g`` and ``f_t`` are max-pooled (``pool`` x ``pool``), cut into
  ``patch`` x ``patch`` windows, and each position's channels into ``groups`` contiguous groups. Every
  (position, group) sample of the student is an anchor; its positive is the teacher's sample at the same
  position and group, its negatives the teacher's samples of every *other* group at every position of
  the same window (same group at other positions: not used). Similarity = minus the L1 distance,
  temperature ``tau``; InfoNCE (cross-entropy with the positive as the target) summed over anchors and
  divided by ``B * h' * w'`` (pooled positions), i.e. ``groups`` x the mean over anchors.

The release's recipe adds pixel-wise logit KD (T = 1, batchmean at the logits' grid, weight 1) and
distils the backbone's last stage (``c4``). See docs/baselines-2024.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import UserError
from .base import DistillLoss
from .common import check_channels, check_same_grid, float32
from .mgd import check_mask, generation_block, random_keep_mask

MASKS = ("random", "center")


class EnhancedProjector(nn.Module):
    """The release's optional projector: ``x1 = relu(c1(x))``, ``x2 = relu(c2(x1))``,
    ``out = (a1(x1) + a2(x2)) / 2``; all 3x3 convs ``C -> C`` with padding 1 and biases."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.block2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.adapt1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.adapt2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = F.relu(self.block1(x))
        x2 = F.relu(self.block2(x1))
        return (self.adapt1(x1) + self.adapt2(x2)) / 2


def center_keep_mask(batch: int, height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``B x 1 x h x w`` ones with the central block ``[h//3 : 2h//3, w//3 : 2w//3]`` zeroed (the release's
    ``rand_mask=False``)."""
    keep = torch.ones(batch, 1, height, width, device=device, dtype=dtype)
    keep[:, :, height // 3 : 2 * height // 3, width // 3 : 2 * width // 3] = 0
    return keep


def patch_samples(x: torch.Tensor, groups: int, patch: tuple[int, int]) -> torch.Tensor:
    """``B x C x H x W`` (H, W multiples of the patch) -> ``(B * windows) x (ph * pw * groups) x (C / groups)``:
    per window, one row per (position, channel group), the group index varying fastest."""
    b, c, h, w = x.shape
    ph, pw = patch
    x = x.reshape(b, groups, c // groups, h // ph, ph, w // pw, pw)
    x = x.permute(0, 3, 5, 4, 6, 1, 2)  # B, rows of windows, columns of windows, ph, pw, group, channel
    return x.reshape(-1, ph * pw * groups, c // groups)


def window_infonce(s: torch.Tensor, t: torch.Tensor, groups: int, tau: float) -> torch.Tensor:
    """Sum over anchors of ``-log softmax`` at the positive. ``s``, ``t``: ``P x n x d`` samples of ``P``
    windows (row ``i`` is group ``i % groups``); logits ``-|s_i - t_j|_1 / tau`` over ``j = i`` and every
    ``j`` of another group. Holds ``P x n x n`` matrices (and, in CUDA's cdist backward, ``P x n x n x d``)."""
    n = s.shape[1]
    sim = -torch.cdist(s, t, p=1) / tau  # P x n x n
    group = torch.arange(n, device=s.device) % groups
    unused = (group[:, None] == group[None, :]) & ~torch.eye(n, dtype=torch.bool, device=s.device)
    logits = sim.masked_fill(unused, float("-inf"))
    return (torch.logsumexp(logits, dim=2) - sim.diagonal(dim1=1, dim2=2)).sum()


class AfDCDLoss(DistillLoss):
    """Af-DCD's masked feature mimicking (``afdcd_fd``) and omni-contrastive (``afdcd_ctr``) terms.

    Inputs: student feature ``B x C_s x h x w``, teacher feature ``B x C_t x h x w`` (same grid; detached
    here); ``C_t`` must be divisible by ``groups``. ``align`` (1x1 conv with bias, ``None`` when
    ``C_s == C_t``) and ``projector`` are trained by the student's optimizer. Returns
    ``{"afdcd_fd": scalar, "afdcd_ctr": scalar}`` (unweighted).

    Release defaults: ``mask_ratio`` 0.75, ``mask="random"``, plain projector, ``tau`` 0.07, ``groups`` 16,
    ``pool`` 4, ``patch`` 4 x 4. Cityscapes scripts: weights fd 2e-6 and ctr 5e-3, plus logit KD (T 1,
    weight 1); the R18 script asks for ``enhanced_projector`` (and a centre mask, which its flag parsing
    never delivers). ``max_grad_norm``: the release clips the loss's own parameters' gradient norm to 15
    before each step (:meth:`clip_grad_norm_` does it; the trainer must call it).

    After pooling, a map whose sides are not multiples of ``patch`` is cut to the largest multiples
    (top-left; the release would fail to reshape); the normaliser counts the positions kept. The
    contrast runs ``windows_per_chunk`` windows at a time, each chunk under activation checkpointing
    when gradients are needed, so the backward keeps no ``n x n`` matrices of the whole batch
    (``n = patch^2 * groups`` = 256 at the defaults); ``None``: all windows at once, no checkpointing.
    """

    taps = ("feat",)
    terms = ("afdcd_fd", "afdcd_ctr")

    def __init__(
        self,
        student_channels: int,
        teacher_channels: int,
        *,
        mask_ratio: float = 0.75,
        mask: str = "random",
        enhanced_projector: bool = False,
        tau: float = 0.07,
        groups: int = 16,
        pool: int = 4,
        patch: int | tuple[int, int] = 4,
        windows_per_chunk: int | None = 32,
        max_grad_norm: float | None = 15.0,
    ) -> None:
        super().__init__()
        if mask not in MASKS:
            raise UserError(f"Af-DCD mask must be one of {', '.join(MASKS)}, got {mask!r}")
        if not 0.0 <= mask_ratio < 1.0:
            raise UserError(f"Af-DCD mask_ratio must be in [0, 1), got {mask_ratio}")
        if groups < 1 or teacher_channels % groups:
            raise UserError(f"Af-DCD groups ({groups}) must divide the teacher's channels ({teacher_channels})")
        if tau <= 0:
            raise UserError(f"Af-DCD tau must be positive, got {tau}")
        if pool < 0:
            raise UserError(f"Af-DCD pool must be >= 0 (0 or 1: no pooling), got {pool}")
        if windows_per_chunk is not None and windows_per_chunk < 1:
            raise UserError(f"Af-DCD windows_per_chunk must be >= 1 or None, got {windows_per_chunk}")
        self.student_channels = student_channels
        self.teacher_channels = teacher_channels
        self.mask_ratio = mask_ratio
        self.mask_kind = mask
        self.tau = tau
        self.groups = groups
        self.pool = pool
        self.patch = (patch, patch) if isinstance(patch, int) else (int(patch[0]), int(patch[1]))
        self.windows_per_chunk = windows_per_chunk
        self.max_grad_norm = max_grad_norm
        self.align = nn.Conv2d(student_channels, teacher_channels, 1) if student_channels != teacher_channels else None
        self.projector = (
            EnhancedProjector(teacher_channels) if enhanced_projector else generation_block(teacher_channels)
        )

    def clip_grad_norm_(self) -> torch.Tensor | None:
        """Clip the gradient norm (L2) of this loss's own parameters to ``max_grad_norm``, as the release
        does before each optimiser step (``None``: no clipping)."""
        if self.max_grad_norm is None:
            return None
        return torch.nn.utils.clip_grad_norm_(self.parameters(), self.max_grad_norm)

    def keep_mask(self, feat: torch.Tensor) -> torch.Tensor:
        b, _, h, w = feat.shape
        if self.mask_kind == "center":
            return center_keep_mask(b, h, w, feat.device, feat.dtype)
        return random_keep_mask(b, h, w, self.mask_ratio, feat.device, feat.dtype)

    def contrast(self, generated: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """``afdcd_ctr`` of a generated map and the teacher's map (both ``B x C_t x h x w``)."""
        if self.pool > 1:
            generated = F.max_pool2d(generated, self.pool)
            teacher = F.max_pool2d(teacher, self.pool)
        b, _, h, w = generated.shape
        ph, pw = self.patch
        h, w = h // ph * ph, w // pw * pw
        if h == 0 or w == 0:
            raise UserError(
                f"Af-DCD: the {'pooled ' if self.pool > 1 else ''}map is {tuple(generated.shape[-2:])}, smaller than "
                f"one {ph} x {pw} window; lower distill.options.afdcd pool or patch"
            )
        s = patch_samples(generated[:, :, :h, :w], self.groups, self.patch)
        t = patch_samples(teacher[:, :, :h, :w], self.groups, self.patch)
        step = s.shape[0] if self.windows_per_chunk is None else self.windows_per_chunk
        chunked = self.windows_per_chunk is not None and s.requires_grad
        total = s.new_zeros(())
        for start in range(0, s.shape[0], step):
            s_c, t_c = s[start : start + step], t[start : start + step]
            if chunked:
                total = total + checkpoint(window_infonce, s_c, t_c, self.groups, self.tau, use_reentrant=False)
            else:
                total = total + window_infonce(s_c, t_c, self.groups, self.tau)
        return total / (b * h * w)

    def forward(
        self,
        student_feat: torch.Tensor,
        teacher_feat: torch.Tensor,
        labels: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """``mask`` (``B x 1 x h x w``, 1 = kept): replaces the configured mask (tests)."""
        check_same_grid("Af-DCD", student_feat, teacher_feat)
        check_channels("Af-DCD", "student", self.student_channels, student_feat)
        check_channels("Af-DCD", "teacher", self.teacher_channels, teacher_feat)
        with torch.autocast(device_type=student_feat.device.type, enabled=False):
            f_s = float32(student_feat)
            f_t = float32(teacher_feat.detach())
            if self.align is not None:
                f_s = self.align(f_s)
            if mask is None:
                mask = self.keep_mask(f_s)
            else:
                check_mask("Af-DCD", mask, f_s)
            generated = self.projector(f_s * mask.to(f_s.dtype))
            fd = (generated - f_t).pow(2).sum() / f_s.shape[0]
            ctr = self.contrast(generated, f_t)
        return {"afdcd_fd": fd, "afdcd_ctr": ctr}
