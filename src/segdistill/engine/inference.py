"""Inference protocols: whole image, sliding window, multi-scale with flip.

All return scores ``B x K x H x W`` at the input size: logits for a single scale without flip,
otherwise the mean of the softmax over scales and flips (argmax is what matters for metrics).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..base.outputs import output_logits

__all__ = ["forward_logits", "output_logits", "predict", "slide_logits"]


def forward_logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Logits ``B x K x H x W`` at the input size (upsampled bilinearly when the model returns less)."""
    logits = output_logits(model(images))
    if logits.shape[-2:] != images.shape[-2:]:
        logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
    return logits


def slide_logits(model: nn.Module, images: torch.Tensor, window: Sequence[int], stride: Sequence[int]) -> torch.Tensor:
    """Sliding-window logits: windows of ``window`` (H, W) every ``stride`` pixels, the last window flush
    with the border; overlapping logits are summed and divided by the count. Images smaller than the
    window are zero-padded (the mean colour after normalisation) and the padding cropped off."""
    batch, _, height, width = images.shape
    win_h, win_w = window
    pad_h, pad_w = max(win_h - height, 0), max(win_w - width, 0)
    if pad_h or pad_w:
        images = F.pad(images, (0, pad_w, 0, pad_h))
    full_h, full_w = images.shape[-2:]
    rows = max(math.ceil((full_h - win_h) / stride[0]), 0) + 1
    cols = max(math.ceil((full_w - win_w) / stride[1]), 0) + 1
    total: torch.Tensor | None = None
    count = torch.zeros(1, 1, full_h, full_w, device=images.device)
    for r in range(rows):
        for c in range(cols):
            y0 = min(r * stride[0], full_h - win_h)
            x0 = min(c * stride[1], full_w - win_w)
            logits = forward_logits(model, images[:, :, y0 : y0 + win_h, x0 : x0 + win_w])
            if total is None:
                total = images.new_zeros(batch, logits.shape[1], full_h, full_w, dtype=logits.dtype)
            total[:, :, y0 : y0 + win_h, x0 : x0 + win_w] += logits
            count[:, :, y0 : y0 + win_h, x0 : x0 + win_w] += 1
    assert total is not None
    return (total / count)[:, :, :height, :width]


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
) -> torch.Tensor:
    """Scores ``B x K x H x W`` for normalised images ``B x 3 x H x W`` under the chosen protocol.

    Each scale ``s`` resizes the image by ``s`` (with ``base_size``: so that its long side is
    ``base_size * s``, the PSPNet-style test protocol); scores come back at the input size."""
    if mode not in ("whole", "slide"):
        raise ValueError(f"unknown inference mode {mode!r}; use 'whole' or 'slide'")
    if mode == "slide" and (window is None or stride is None):
        raise ValueError("sliding-window inference needs a window and a stride")

    def run(x: torch.Tensor) -> torch.Tensor:
        return forward_logits(model, x) if mode == "whole" else slide_logits(model, x, window, stride)

    size = images.shape[-2:]
    if list(scales) == [1.0] and not flip and not base_size:
        return run(images)
    scores: torch.Tensor | None = None
    base = base_size / max(size) if base_size else 1.0
    for scale in [s * base for s in scales]:
        scaled = images
        if scale != 1.0:
            new_size = (int(round(size[0] * scale)), int(round(size[1] * scale)))
            scaled = F.interpolate(images, size=new_size, mode="bilinear", align_corners=False)
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
    return scores / (len(scales) * (2 if flip else 1))
