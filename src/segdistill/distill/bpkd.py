"""Boundary-Privileged Knowledge Distillation (Liu et al., "BPKD: Boundary Privileged Knowledge Distillation
for Semantic Segmentation", WACV 2024, arXiv 2306.08075), reconstructed: the authors' repository (AkideLiu/BPKD)
releases evaluation code and weights only, so the formulation below is assembled from the paper's abstract and
three independent third-party re-implementations, which agree on the structure, the weights and the kernel (see
docs/baselines-2024.md for the sources and for every point that had to be decided).

The logits are split by the ground truth's class boundaries into an edge part and a body part:

* edge masks (a "trimap" per class): the labels' one-hot ``B x K x H x W`` (ignored pixels belong to no class)
  is dilated and eroded with a ``k x k`` square (``kernel_size``, 7); ``edge_c = dilate_c - erode_c`` at valid
  pixels, i.e. the pixels within ``k // 2`` of a boundary of class ``c`` on either side (a boundary with an
  ignored region counts; the image border does not). The binary edges are average-pooled (adaptive) to the
  logits' grid: ``M B x K x h x w`` in ``[0, 1]``; the body mask is ``1 - M``;
* edge term (pixel level, over classes): with ``Z_E = Z * M`` (``mask_logits``; the logits of classes that do
  not border a pixel are zeroed there), ``phi_i = T_e^2 KL(softmax(Z_E^t[:, i] / T_e) || softmax(Z_E^s[:, i] / T_e))``
  at every position ``i``, weighted by each class's edge mask and divided by the number of that class's edge
  positions (``n_{b,c}``: positions where ``M_{b,c} > 0``), summed over classes with the weight ``alpha`` and
  averaged over images: ``bpkd_edge = (1 / B) sum_b sum_c alpha * sum_i phi_{b,i} M_{b,c,i} / n_{b,c}`` (classes
  with no edge in an image contribute 0);
* body term (shape, over positions): channel-wise distillation (Shu et al. 2021) of the body logits
  ``Z_B = Z * (1 - M)``: ``bpkd_body = T_b^2 / (B K) sum_{b,c} KL(softmax_hw(Z_B^t / T_b) || softmax_hw(Z_B^s / T_b))``.

Weights as the re-implementations give them: ``bpkd_edge`` 50, ``bpkd_body`` 20, ``alpha`` 2, ``T`` 1, ``k`` 7.

Memory: the morphology runs at label resolution, one image at a time (``K x H x W`` floats per step, no
gradient), so its transient is bounded by ``~5 K H W`` floats whatever the batch; everything that keeps a
gradient lives on the logits' grid (``B x K x h x w``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..base.labels import IGNORE_INDEX
from ..errors import UserError
from .base import DistillLoss
from .common import check_same_grid, float32
from .cwd import channel_kl


def _check_kernel(kernel_size: int) -> None:
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise UserError(f"BPKD kernel_size must be a positive odd number of pixels, got {kernel_size}")


def image_edges(labels: torch.Tensor, num_classes: int, kernel_size: int, ignore_index: int) -> torch.Tensor:
    """Binary per-class edges ``K x H x W`` (float32) of one image's ``H x W`` labels.

    ``edge_c(p) = 1`` iff ``p`` is a valid pixel, class ``c`` occurs in the ``k x k`` window around ``p`` and the
    window (its part inside the image) is not entirely class ``c``: ``dilate_c - erode_c`` with a square
    structuring element. Ignored (or out-of-range) pixels belong to no class.
    """
    r = kernel_size // 2
    ok = ((labels >= 0) & (labels < num_classes) & (labels != ignore_index))[None, None]  # 1 x 1 x H x W
    lab = labels[None, None].float()
    # window max / min with an invalid pixel above / below every class: equal only where the whole window
    # (inside the image: max_pool2d pads with -inf) is one valid class, i.e. where that class is eroded
    hi = F.max_pool2d(torch.where(ok, lab, torch.full_like(lab, num_classes)), kernel_size, 1, r)
    lo = -F.max_pool2d(torch.where(ok, -lab, torch.ones_like(lab)), kernel_size, 1, r)
    onehot = F.one_hot(torch.where(ok[0], labels[None], 0).long(), num_classes).permute(0, 3, 1, 2).float() * ok
    dilated = F.max_pool2d(onehot, kernel_size, stride=1, padding=r)
    return ((dilated - onehot * (hi == lo)) * ok)[0]


def class_edges(
    labels: torch.Tensor, num_classes: int, kernel_size: int = 7, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """:func:`image_edges` of every image of ``B x H x W`` labels: ``B x K x H x W`` (float32)."""
    _check_kernel(kernel_size)
    return torch.stack([image_edges(lab, num_classes, kernel_size, ignore_index) for lab in labels])


def edge_masks(
    labels: torch.Tensor,
    num_classes: int,
    size: tuple[int, int],
    kernel_size: int = 7,
    ignore_index: int = IGNORE_INDEX,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Soft per-class edge masks ``M B x K x h x w`` in ``[0, 1]``: :func:`image_edges` at label resolution,
    adaptive-average-pooled in ``dtype`` to ``size`` (the logits' grid; identity at the label size). One image at
    a time, so the full-resolution transient is a few ``K x H x W`` maps whatever the batch size."""
    _check_kernel(kernel_size)
    masks = []
    for lab in labels:
        edges = image_edges(lab, num_classes, kernel_size, ignore_index).to(dtype)
        masks.append(edges if tuple(edges.shape[-2:]) == tuple(size) else F.adaptive_avg_pool2d(edges, size))
    return torch.stack(masks)


def edge_term(
    student: torch.Tensor,
    teacher: torch.Tensor,
    masks: torch.Tensor,
    temperature: float,
    alpha: float,
    mask_logits: bool = True,
) -> torch.Tensor:
    """``(1 / B) sum_b sum_c alpha * sum_i phi_{b,i} M_{b,c,i} / n_{b,c}`` with ``n_{b,c}`` the number of positions
    where ``M_{b,c} > 0`` (module docstring); logits and masks ``B x K x h x w``, teacher already detached."""
    if mask_logits:
        student, teacher = student * masks, teacher * masks
    log_q = F.log_softmax(student / temperature, dim=1)
    log_p = F.log_softmax(teacher / temperature, dim=1)
    phi = (log_p.exp() * (log_p - log_q)).sum(dim=1) * temperature**2  # B x h x w
    weighted = torch.einsum("bhw,bkhw->bk", phi, masks)
    count = (masks > 0).sum(dim=(2, 3)).to(phi.dtype)  # B x K: the class's edge positions on the logits' grid
    per_class = weighted / count.clamp(min=1.0)
    return alpha * per_class.sum(dim=1).mean()


class BPKDLoss(DistillLoss):
    """Edge and body distillation of the logits (module docstring).

    Inputs: logits ``B x K x h x w`` (student, teacher; same grid, teacher detached here) and labels
    ``B x H x W`` (ignore 255). Returns ``{"bpkd_edge": scalar, "bpkd_body": scalar}`` (unweighted; weights 50
    and 20). ``kernel_size``: the morphology's square side in label pixels (odd); ``edge_temperature`` /
    ``body_temperature``: ``T_e`` / ``T_b``; ``edge_alpha``: the per-class weight of the edge term;
    ``mask_logits``: multiply the logits by the edge mask before the edge term's softmax (as the
    re-implementations do); without it the edge term is plain pixel KD weighted by the edge masks.
    """

    taps = ("logits",)
    terms = ("bpkd_edge", "bpkd_body")

    def __init__(
        self,
        num_classes: int,
        *,
        kernel_size: int = 7,
        edge_temperature: float = 1.0,
        body_temperature: float = 1.0,
        edge_alpha: float = 2.0,
        mask_logits: bool = True,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        super().__init__()
        _check_kernel(kernel_size)
        if edge_temperature <= 0 or body_temperature <= 0:
            raise UserError(
                f"BPKD temperatures must be positive, got edge {edge_temperature} and body {body_temperature}"
            )
        if edge_alpha < 0:
            raise UserError(f"BPKD edge_alpha must be non-negative, got {edge_alpha}")
        self.num_classes = num_classes
        self.kernel_size = kernel_size
        self.edge_temperature = edge_temperature
        self.body_temperature = body_temperature
        self.edge_alpha = edge_alpha
        self.mask_logits = mask_logits
        self.ignore_index = ignore_index

    def forward(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        check_same_grid("BPKD", student_logits, teacher_logits)
        for side, logits in (("student", student_logits), ("teacher", teacher_logits)):
            if logits.shape[1] != self.num_classes:
                raise UserError(
                    f"BPKD was built for {self.num_classes} classes, the {side} logits have {logits.shape[1]} channels"
                )
        with torch.autocast(device_type=student_logits.device.type, enabled=False):
            z_s = float32(student_logits)
            z_t = float32(teacher_logits.detach())
            size = tuple(z_s.shape[-2:])
            masks = edge_masks(labels, self.num_classes, size, self.kernel_size, self.ignore_index, z_s.dtype)
            edge = edge_term(z_s, z_t, masks, self.edge_temperature, self.edge_alpha, self.mask_logits)
            body = 1.0 - masks
            body_loss = channel_kl(z_s * body, z_t * body, self.body_temperature)
        return {"bpkd_edge": edge, "bpkd_body": body_loss}
