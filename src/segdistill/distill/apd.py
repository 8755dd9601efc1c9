"""Adaptive Perspective Distillation (Tian et al., "Adaptive Perspective Distillation for Semantic
Segmentation", TPAMI 2023), vectorised.

A segmentation classifier is one "universal perspective" shared by all images. APD builds an
*adaptive perspective* per batch: class prototypes pooled from each model's own (adapted,
L2-normalised) features under the ground-truth mask, used as a cosine classifier. The student's
adaptive predictions are matched to the teacher's (``apd_kl``), the prototypes are aligned
(``apd_align``), and the teacher adapter is trained by a cross-entropy on the teacher's adaptive
logits (``apd_teacher_ce``).

Shapes: ``student_feat B x C_s x h x w``, ``teacher_feat B x C_t x h' x w'`` (resized to ``h x w``
if it differs), ``labels B x H x W`` (ignore 255). Reductions follow the authors' release:

* ``apd_kl``: KL(softmax(z_t) || softmax(z_s)) over the N present classes, summed over all
  elements and divided by ``B * N * h * w`` (torch ``KLDivLoss`` 'mean'), teacher detached;
* ``apd_align``: mean over present classes of ``0.5 * (1 - <p_s, p_t>)``, teacher detached;
* ``apd_teacher_ce``: cross-entropy of the teacher's adaptive logits in K channels (absent classes 0),
  upsampled bilinearly (align_corners=True) to ``H x W``, ignore 255; trains only the teacher adapter.

Release weights: ``apd_kl`` 10, ``apd_align`` 10 (plus logit KD 10 at T=1), scale 10.

Pools (``pool_size``, ``scope``): the release pools over each GPU's own batch (Cityscapes: 8 images on 4
GPUs, 2 per pool) and DDP averages the GPUs' gradients. ``pool_size=p`` splits a process's batch into
``G = ceil(B / p)`` groups; group ``g`` holds images ``g, g + G, g + 2G, ...``, the images rank ``g`` of
``G`` processes gets from the sampler (rank ``r`` takes positions ``r, r + world, ...``, as torch's
``DistributedSampler``), so one process with ``pool_size`` pools exactly what ``G`` processes pool, and
two processes with half the batch each pool the same groups again. Each group has its own prototypes
and its own N; each term is computed per group (``apd_kl`` divided by the group's ``images * N * h * w``,
``apd_teacher_ce`` a mean over the group's valid pixels) and averaged over the groups that have a
labelled pixel. (DDP averages over every rank, one without a labelled pixel adding zeros: the two agree
whenever every pool has a labelled pixel, which the release's data filter makes sure of.)
``scope="image"`` is a group of one image; ``pool_size`` unset (or ``>= B``) is one group, the whole
per-process batch, computed exactly as before.

Implementation (:mod:`.apd_kernels`): each side is one autograd function (normalise per pixel, pool the
prototypes with one batched matmul under the one-hot mask, normalise them, cosine logits) with an
analytic backward that reuses the per-pixel norms: 7 passes over a ``B x C x h x w`` feature map per
side, forward and backward, instead of autograd's chain of divisions. The teacher's logits are computed
once; the student terms use them detached, and only ``apd_teacher_ce`` carries the teacher adapter's
graph. That cross-entropy upsamples and softmaxes chunks of output rows of one image at a time, with
its own backward (the transposed interpolation), so the ``B x K x H x W`` logits and their gradient
never exist at once. Absent classes are masked with a large negative logit,
every shape is static and nothing syncs with the host. :func:`reference_terms` is the previous
implementation (autograd through plain torch ops), kept for the tests and ``benchmarks/apd_loss.py``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..base.labels import IGNORE_INDEX
from ..errors import UserError
from .apd_kernels import (
    AdaptiveKL,
    NormPoolLogits,
    UpsampleCrossEntropy,
    class_mask,
    group_sum,
    per_image,
    ranks_sum,
)
from .base import DistillLoss
from .common import one_hot_valid, resize_labels

SCOPES = ("batch", "image", "global")
_ABSENT = -1.0e4  # logit for classes absent from the batch: exp() underflows to exactly 0 in float32


def make_adapter(in_channels: int, hidden: int, out_channels: int) -> nn.Sequential:
    """The release's adapter: 1x1 conv, ReLU, 1x1 conv."""
    return nn.Sequential(nn.Conv2d(in_channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, out_channels, 1))


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks. Every rank's output depends on every rank's input, so the gradient of a rank's
    input is the sum over ranks of the gradients of their outputs: an all-reduce again."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def _all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Differentiable all-reduce (sum) across DDP ranks; identity when not distributed."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return _AllReduceSum.apply(x)
    return x


def pool_prototypes(features: torch.Tensor, onehot: torch.Tensor, scope: str) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised class prototypes ``K x C`` and presence ``K`` of the whole batch (scope batch) or of
    every rank's batch (scope global).

    ``features B x C x h x w`` (already normalised per pixel), ``onehot B x K x h x w``. Absent
    prototypes are zero vectors. One batched matmul ``(B x K x hw) @ (B x hw x C)`` on views: no copy
    of the feature map.
    """
    sums = torch.bmm(onehot.flatten(2), features.flatten(2).transpose(1, 2))  # B x K x C
    counts = onehot.sum(dim=(2, 3))  # B x K
    sums, counts = sums.sum(dim=0), counts.sum(dim=0)
    if scope == "global":
        sums = _all_reduce_sum(sums)
        counts = _all_reduce_sum(counts.detach())
    return F.normalize(sums, dim=-1), counts > 0


def pool_group_prototypes(
    features: torch.Tensor, onehot: torch.Tensor, groups: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prototypes ``G x K x C`` (L2-normalised, absent ones zero) and presence ``G x K`` of each of the
    ``groups`` strided groups of images (:func:`group_sum`); inputs as for :func:`pool_prototypes`."""
    sums = torch.bmm(onehot.flatten(2), features.flatten(2).transpose(1, 2))  # B x K x C
    counts = onehot.sum(dim=(2, 3))  # B x K
    return F.normalize(group_sum(sums, groups), dim=-1), group_sum(counts, groups) > 0


def _mean_over(values: torch.Tensor, counted: torch.Tensor) -> torch.Tensor:
    """Mean of the per-group ``values`` (``G``) over the groups where ``counted``; 0 when none is."""
    counted = counted.to(values.dtype)
    return (values * counted).sum() / counted.sum().clamp(min=1.0)


def adaptive_logits(features: torch.Tensor, prototypes: torch.Tensor, scale: float) -> torch.Tensor:
    """Cosine logits ``B x K x h x w`` (contiguous) of normalised, contiguous ``B x C x h x w`` features
    against ``K x C`` or ``B x K x C`` prototypes: one matmul on a view of the feature map."""
    b, _, h, w = features.shape
    logits = torch.matmul(prototypes, features.flatten(2))  # B x K x hw
    return (scale * logits).view(b, -1, h, w)


class APDLoss(DistillLoss):
    """Adaptive Perspective Distillation loss; see the module docstring for the formulation.

    ``APDLoss(num_classes, student_channels, teacher_channels, adapter=True, adapter_channels=512,
    scale=10.0, ignore_index=255, scope="batch", pool_size=None)``; ``loss(student_feat, teacher_feat,
    labels)`` returns ``{"apd_kl", "apd_align", "apd_teacher_ce"}`` (unweighted scalars).

    ``scope``: ``"batch"`` pools prototypes over the (per-device) batch, as the release does;
    ``"image"`` pools per image, as the paper's text describes; ``"global"`` pools over all DDP ranks.
    ``pool_size`` (scope batch only): images per pool, the release's images per GPU; a batch of ``B``
    forms ``ceil(B / pool_size)`` pools whose terms are averaged, as DDP averages the GPUs' gradients
    (module docstring). ``None``: the whole batch is one pool. A pool without a labelled pixel
    contributes nothing (it is left out of the means).
    The teacher adapter is trained only by ``apd_teacher_ce`` with its own Adam optimizer
    (:meth:`own_optimizers`); the student adapter is trained with the student.
    """

    taps = ("feat",)
    terms = ("apd_kl", "apd_align", "apd_teacher_ce")
    own_terms = frozenset({"apd_teacher_ce"})

    def __init__(
        self,
        num_classes: int,
        student_channels: int,
        teacher_channels: int,
        *,
        adapter: bool = True,
        adapter_channels: int = 512,
        scale: float = 10.0,
        ignore_index: int = IGNORE_INDEX,
        scope: str = "batch",
        teacher_adapter_lr: float = 1e-5,
        pool_size: int | None = None,
    ) -> None:
        super().__init__()
        if scope not in SCOPES:
            raise UserError(f"APD scope must be one of {', '.join(SCOPES)}, got {scope!r}")
        if pool_size is not None and pool_size < 1:
            raise UserError(f"APD pool_size must be a positive number of images, got {pool_size}")
        if pool_size is not None and scope != "batch":
            raise UserError(
                f"APD pool_size applies to scope batch only, got scope {scope!r} with pool_size {pool_size}"
            )
        if not adapter and student_channels != teacher_channels:
            raise UserError(
                f"APD without adapters needs equal feature channels, got student {student_channels} and "
                f"teacher {teacher_channels}; set adapter=True"
            )
        self.num_classes = num_classes
        self.student_channels = student_channels
        self.teacher_channels = teacher_channels
        self.scale = scale
        self.ignore_index = ignore_index
        self.scope = scope
        self.pool_size = pool_size
        self.teacher_adapter_lr = teacher_adapter_lr
        self.student_adapter = make_adapter(student_channels, adapter_channels, teacher_channels) if adapter else None
        self.teacher_adapter = make_adapter(teacher_channels, adapter_channels, teacher_channels) if adapter else None
        self._teacher_optimizer: torch.optim.Optimizer | None = None

    def own_optimizers(self) -> list[tuple[str, nn.Module, torch.optim.Optimizer]]:
        if self.teacher_adapter is None:
            return []
        if self._teacher_optimizer is None:
            self._teacher_optimizer = torch.optim.Adam(
                self.teacher_adapter.parameters(), lr=self.teacher_adapter_lr, betas=(0.9, 0.99)
            )
        return [("apd_teacher_ce", self.teacher_adapter, self._teacher_optimizer)]

    def _check_channels(self, student_feat: torch.Tensor, teacher_feat: torch.Tensor) -> None:
        if student_feat.shape[1] != self.student_channels:
            raise UserError(
                f"APD was built for {self.student_channels} student feature channels, the student tap gives "
                f"{student_feat.shape[1]}"
            )
        if teacher_feat.shape[1] != self.teacher_channels:
            raise UserError(
                f"APD was built for {self.teacher_channels} teacher feature channels, the teacher tap gives "
                f"{teacher_feat.shape[1]}"
            )

    def forward(
        self, student_feat: torch.Tensor, teacher_feat: torch.Tensor, labels: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """``student_feat B x C_s x h x w``, ``teacher_feat B x C_t x h' x w'``, ``labels B x H x W`` ->
        the three unweighted scalar terms (float32, or float64 for float64 features)."""
        self._check_channels(student_feat, teacher_feat)
        with torch.autocast(device_type=student_feat.device.type, enabled=False):
            f_s, f_t = self._adapted(student_feat, teacher_feat)
            return self._terms(f_s, f_t, labels)

    def _adapted(self, student_feat: torch.Tensor, teacher_feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both feature maps in float32 (float64 kept), the teacher's detached and resized to the student's
        ``h x w``, through the adapters: contiguous ``B x C_t x h x w`` each (the teacher's carries the
        teacher adapter's graph)."""
        size = tuple(student_feat.shape[-2:])
        dtype = torch.float64 if student_feat.dtype == torch.float64 else torch.float32
        f_s = student_feat.to(dtype)
        f_t = teacher_feat.detach().to(dtype)
        if tuple(f_t.shape[-2:]) != size:
            f_t = F.interpolate(f_t, size=size, mode="bilinear", align_corners=False)
        if self.student_adapter is not None:
            f_s = self.student_adapter(f_s)
            f_t = self.teacher_adapter(f_t)
        # contiguous NCHW (a no-op unless the maps are channels_last): every later op is a view
        return f_s.contiguous(), f_t.contiguous()

    def _terms(self, f_s: torch.Tensor, f_t: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """The three terms of adapted maps ``f_s``, ``f_t B x C x h x w`` and ``labels B x H x W``: per image
        (KL and cross-entropy sums) then per pool ``G`` (one pool unless ``pool_size`` or scope image), then
        averaged over the pools with a labelled pixel."""
        b, _, h, w = f_s.shape
        dtype = f_s.dtype
        groups = self._groups(b) or 1
        onehot = class_mask(resize_labels(labels, (h, w)), self.num_classes, self.ignore_index, dtype)  # B x K x hw
        counts = group_sum(onehot.sum(dim=2), groups)  # G x K
        if self.scope == "global":
            counts = ranks_sum(counts)
        present = counts > 0  # G x K
        keep = per_image(present, b)  # B x K: the classes of each image's pool
        reduce_ranks = self.scope == "global"
        z_s, p_s = NormPoolLogits.apply(f_s, onehot, groups, self.scale, reduce_ranks)  # B x K x hw, G x K x C
        z_t, p_t = NormPoolLogits.apply(f_t, onehot, groups, self.scale, reduce_ranks)

        present_f = present.to(dtype)
        n_present = present_f.sum(dim=1)  # G: each pool's N
        images = group_sum(f_s.new_ones(b), groups)  # G: images per pool
        kl = AdaptiveKL.apply(z_s, z_t.detach(), keep)  # B: per-image sums, teacher detached
        kl = group_sum(kl, groups) / (images * n_present.clamp(min=1.0) * (h * w))
        cos = (p_s * p_t.detach()).sum(dim=-1)  # G x K
        align = (0.5 * (1.0 - cos) * present_f).sum(dim=1) / n_present.clamp(min=1.0)

        # only this term carries the teacher adapter's graph; absent classes are logits 0
        z_t_map = z_t.view(b, -1, h, w)  # cosine logits: |z_t| <= scale (up to rounding)
        ce = UpsampleCrossEntropy.apply(z_t_map, keep.to(dtype), labels, self.ignore_index, 1.01 * self.scale)  # B
        valid = group_sum((labels != self.ignore_index).sum(dim=(1, 2)).to(dtype), groups)  # G
        ce = group_sum(ce, groups) / valid.clamp(min=1.0)
        has_class = n_present > 0
        return {
            "apd_kl": _mean_over(kl, has_class),
            "apd_align": _mean_over(align, has_class),
            "apd_teacher_ce": _mean_over(ce, valid > 0),
        }

    def _groups(self, batch: int) -> int | None:
        """The number of pools a batch of ``batch`` images forms, or ``None`` when it is one pool (scope
        batch without ``pool_size`` or with ``pool_size >= batch``; scope global)."""
        if self.scope == "image":
            return batch
        if self.scope == "batch" and self.pool_size is not None and self.pool_size < batch:
            return -(-batch // self.pool_size)
        return None


# ----------------------------------------------------------------------------------------------------
# The previous implementation: the same formula through autograd on plain torch ops (47 passes over a
# feature map, forward + backward, and the B x K x H x W teacher logits materialised with their gradient).
# Kept as the reference of tests/test_apd_fast.py and benchmarks/apd_loss.py.


def reference_terms(
    loss: APDLoss, student_feat: torch.Tensor, teacher_feat: torch.Tensor, labels: torch.Tensor
) -> dict[str, torch.Tensor]:
    """``loss``'s three terms computed as :class:`APDLoss` did before :mod:`.apd_kernels` (same adapters,
    options and inputs: ``student_feat B x C_s x h x w``, ``teacher_feat B x C_t x h' x w'``, ``labels
    B x H x W``)."""
    loss._check_channels(student_feat, teacher_feat)
    size = tuple(student_feat.shape[-2:])
    with torch.autocast(device_type=student_feat.device.type, enabled=False):
        f_s, f_t = loss._adapted(student_feat, teacher_feat)
        dtype = f_s.dtype
        s = F.normalize(f_s, dim=1).contiguous()
        t = F.normalize(f_t, dim=1).contiguous()  # carries gradient to the teacher adapter only
        grid_labels = resize_labels(labels, size)
        onehot = one_hot_valid(grid_labels, loss.num_classes, loss.ignore_index, dtype)

        groups = loss._groups(s.shape[0])
        if groups is not None:
            return _reference_grouped_terms(loss, s, t, onehot, labels, groups)
        p_s, present = pool_prototypes(s, onehot, loss.scope)
        p_t, _ = pool_prototypes(t, onehot, loss.scope)
        present_f = present.to(s.dtype)
        mask = present[None, :, None, None]  # 1 x K x 1 x 1

        z_t_raw = adaptive_logits(t, p_t, loss.scale)
        kl_map = _reference_kl_map(loss, s, p_s, z_t_raw, mask)
        pixels = size[0] * size[1]
        n_present = present_f.sum().clamp(min=1.0)
        apd_kl = kl_map.sum() / (n_present * kl_map.shape[0] * pixels)
        cos = (p_s * p_t.detach()).sum(dim=-1)
        apd_align = (0.5 * (1.0 - cos) * present_f).sum() / present_f.sum().clamp(min=1.0)

        z_up = _reference_teacher_logits_at_label_size(z_t_raw, mask, labels)
        ce = F.cross_entropy(z_up, labels, ignore_index=loss.ignore_index, reduction="sum")
        apd_teacher_ce = ce / (labels != loss.ignore_index).sum().clamp(min=1)
    return {"apd_kl": apd_kl, "apd_align": apd_align, "apd_teacher_ce": apd_teacher_ce}


def _reference_kl_map(
    loss: APDLoss, s: torch.Tensor, p_s: torch.Tensor, z_t_raw: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Per-pixel KL(teacher || student) over the present classes: ``B x h x w``."""
    z_s = adaptive_logits(s, p_s, loss.scale).masked_fill(~mask, _ABSENT)
    z_t = z_t_raw.detach().masked_fill(~mask, _ABSENT)
    log_q = F.log_softmax(z_s, dim=1)
    log_p = F.log_softmax(z_t, dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)


def _reference_teacher_logits_at_label_size(
    z_t_raw: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """The teacher's adaptive logits in K channels (absent classes 0), upsampled to the labels."""
    z_t_train = z_t_raw * mask.to(z_t_raw.dtype)
    return F.interpolate(z_t_train, size=labels.shape[-2:], mode="bilinear", align_corners=True)


def _reference_grouped_terms(
    loss: APDLoss, s: torch.Tensor, t: torch.Tensor, onehot: torch.Tensor, labels: torch.Tensor, groups: int
) -> dict[str, torch.Tensor]:
    """The three terms of each of ``groups`` pools (image ``i`` in pool ``i % groups``), averaged over the
    pools with a labelled pixel. ``s``, ``t`` ``B x C x h x w`` normalised features, ``onehot B x K x h x w``,
    ``labels B x H x W``."""
    b, _, h, w = s.shape
    p_s, present = pool_group_prototypes(s, onehot, groups)  # G x K x C, G x K
    p_t, _ = pool_group_prototypes(t, onehot, groups)
    mask = per_image(present, b)[:, :, None, None]  # B x K x 1 x 1: the classes of each image's pool
    present_f = present.to(s.dtype)
    n_present = present_f.sum(dim=1)  # G: each pool's N
    has_class = n_present > 0
    images = group_sum(s.new_ones(b), groups)  # G: images per pool

    z_t_raw = adaptive_logits(t, per_image(p_t, b), loss.scale)
    kl_map = _reference_kl_map(loss, s, per_image(p_s, b), z_t_raw, mask)  # B x h x w
    kl = group_sum(kl_map.sum(dim=(1, 2)), groups) / (images * n_present.clamp(min=1.0) * (h * w))
    cos = (p_s * p_t.detach()).sum(dim=-1)  # G x K
    align = (0.5 * (1.0 - cos) * present_f).sum(dim=1) / n_present.clamp(min=1.0)

    z_up = _reference_teacher_logits_at_label_size(z_t_raw, mask, labels)
    ce_map = F.cross_entropy(z_up, labels, ignore_index=loss.ignore_index, reduction="none")  # B x H x W
    valid = group_sum((labels != loss.ignore_index).sum(dim=(1, 2)).to(ce_map.dtype), groups)  # G
    ce = group_sum(ce_map.sum(dim=(1, 2)), groups) / valid.clamp(min=1.0)
    return {
        "apd_kl": _mean_over(kl, has_class),
        "apd_align": _mean_over(align, has_class),
        "apd_teacher_ce": _mean_over(ce, valid > 0),
    }
