"""Inference protocols: whole image, sliding window, multi-scale with flip.

All return scores ``B x K x H x W`` at the input size: logits for a single scale without flip,
otherwise the mean of the softmax over scales and flips (argmax is what matters for metrics).

Two ways of merging sliding windows, as the model zoos measured their numbers:
``logits`` (mmsegmentation): the windows' logits are averaged; flips and scales average the softmax
of whole-image passes. ``softmax`` (semseg / the APD release's ``tool/test.py``): each window's
softmax, averaged with its own flipped pass, and the probabilities averaged over windows; an image
smaller than the window is padded on both sides (centred) with the mean colour.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..base.outputs import output_logits

__all__ = ["forward_logits", "keep_ratio_factor", "keep_ratio_size", "output_logits", "predict", "slide_logits"]

WINDOW_MERGES = ("logits", "softmax")


def forward_logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Logits ``B x K x H x W`` at the input size (upsampled bilinearly when the model returns less)."""
    logits = output_logits(model(images))
    if logits.shape[-2:] != images.shape[-2:]:
        logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
    return logits


def slide_logits(
    model: nn.Module,
    images: torch.Tensor,
    window: Sequence[int],
    stride: Sequence[int],
    *,
    window_softmax: bool = False,
    flip: bool = False,
) -> torch.Tensor:
    """Sliding-window logits: windows of ``window`` (H, W) every ``stride`` pixels, the last window flush
    with the border; overlapping logits are summed and divided by the count. Images smaller than the
    window are zero-padded (the mean colour after normalisation) and the padding cropped off.

    ``window_softmax`` (semseg's protocol): each window contributes its softmax (with ``flip``, the
    mean of its own and its flipped pass's), and the padding is centred."""
    batch, _, height, width = images.shape
    win_h, win_w = window
    pad_h, pad_w = max(win_h - height, 0), max(win_w - width, 0)
    top, left = (pad_h // 2, pad_w // 2) if window_softmax else (0, 0)
    if pad_h or pad_w:
        images = F.pad(images, (left, pad_w - left, top, pad_h - top))
    full_h, full_w = images.shape[-2:]
    rows = max(math.ceil((full_h - win_h) / stride[0]), 0) + 1
    cols = max(math.ceil((full_w - win_w) / stride[1]), 0) + 1
    total: torch.Tensor | None = None
    count = torch.zeros(1, 1, full_h, full_w, device=images.device)
    for r in range(rows):
        for c in range(cols):
            y0 = min(r * stride[0], full_h - win_h)
            x0 = min(c * stride[1], full_w - win_w)
            crop = images[:, :, y0 : y0 + win_h, x0 : x0 + win_w]
            logits = window_scores(model, crop, flip) if window_softmax else forward_logits(model, crop)
            if total is None:
                total = images.new_zeros(batch, logits.shape[1], full_h, full_w, dtype=logits.dtype)
            total[:, :, y0 : y0 + win_h, x0 : x0 + win_w] += logits
            count[:, :, y0 : y0 + win_h, x0 : x0 + win_w] += 1
    assert total is not None
    return (total / count)[:, :, top : top + height, left : left + width]


def window_scores(model: nn.Module, crop: torch.Tensor, flip: bool) -> torch.Tensor:
    """semseg's ``net_process``: the softmax of one window, averaged with its flipped pass's."""
    prob = forward_logits(model, crop).float().softmax(dim=1)
    if flip:
        prob = (prob + forward_logits(model, crop.flip(-1)).float().softmax(dim=1).flip(-1)) / 2
    return prob


def keep_ratio_factor(size: Sequence[int], keep_ratio: Sequence[int]) -> float:
    """mmsegmentation's ``Resize(img_scale=(long, short), keep_ratio=True)``: the largest factor that
    fits the image's long side within ``long`` and its short side within ``short``."""
    long_side, short_side = max(keep_ratio), min(keep_ratio)
    return min(long_side / max(size), short_side / min(size))


def keep_ratio_size(size: Sequence[int], factor: float) -> tuple[int, int]:
    """The image size (H, W) that ``size`` resized by ``factor`` gets in mmcv's ``rescale_size``:
    each side ``int(side * factor + 0.5)`` (half rounds up; Python's ``round`` would round half to even)."""
    return int(size[0] * float(factor) + 0.5), int(size[1] * float(factor) + 0.5)


@torch.no_grad()
def predict(
    model: nn.Module,
    images: torch.Tensor,
    mode: str = "whole",
    window: Sequence[int] | None = None,
    stride: Sequence[int] | None = None,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    base_size: int | None = None,
    keep_ratio: Sequence[int] | None = None,
    window_merge: str = "logits",
) -> torch.Tensor:
    """Scores ``B x K x H x W`` for normalised images ``B x 3 x H x W`` under the chosen protocol.

    Each scale ``s`` resizes the image by ``s`` (with ``base_size``: so that its long side is
    ``base_size * s``, the PSPNet-style test protocol; with ``keep_ratio`` (long, short): by
    ``s`` times mmsegmentation's keep-ratio factor); scores come back at the input size.
    ``window_merge``: ``logits`` or ``softmax`` (see the module docstring)."""
    if mode not in ("whole", "slide"):
        raise ValueError(f"unknown inference mode {mode!r}; use 'whole' or 'slide'")
    if mode == "slide" and (window is None or stride is None):
        raise ValueError("sliding-window inference needs a window and a stride")
    if window_merge not in WINDOW_MERGES:
        raise ValueError(f"unknown window merge {window_merge!r}; use one of {WINDOW_MERGES}")
    per_window = mode == "slide" and window_merge == "softmax"

    def run(x: torch.Tensor) -> torch.Tensor:
        if mode == "whole":
            return forward_logits(model, x)
        return slide_logits(model, x, window, stride, window_softmax=per_window, flip=flip)

    size = images.shape[-2:]
    if list(scales) == [1.0] and not flip and not base_size and not keep_ratio and not per_window:
        return run(images)
    scores: torch.Tensor | None = None
    if keep_ratio:
        base = keep_ratio_factor(size, keep_ratio)
    else:
        base = base_size / max(size) if base_size else 1.0
    for scale in [s * base for s in scales]:
        scaled = images
        if scale != 1.0:
            if keep_ratio:  # mmcv's rounding
                new_size = keep_ratio_size(size, scale)
            else:
                new_size = (int(round(size[0] * scale)), int(round(size[1] * scale)))
            scaled = F.interpolate(images, size=new_size, mode="bilinear", align_corners=False)
        if per_window:  # flips inside each window; the windows' probabilities come back
            prob = run(scaled)
            if prob.shape[-2:] != size:
                prob = F.interpolate(prob, size=size, mode="bilinear", align_corners=False)
            scores = prob if scores is None else scores + prob
            continue
        variants = [scaled, scaled.flip(-1)] if flip else [scaled]
        for i, x in enumerate(variants):
            logits = run(x)
            if i == 1:
                logits = logits.flip(-1)
            if logits.shape[-2:] != size:
                logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
            prob = logits.float().softmax(dim=1)
            scores = prob if scores is None else scores + prob
    assert scores is not None
    return scores / (len(scales) * (2 if flip and not per_window else 1))
