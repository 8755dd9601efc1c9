"""A model's own input normalisation, applied inside the model.

The data pipeline gives every model ImageNet-normalised RGB (:mod:`segdistill.base.normalisation`).
A checkpoint trained with another normalisation (CIRKD's BGR mean subtraction, a Caffe-style
backbone) names its own in its model section (``input_mean``, ``input_std`` in 0-255 pixel units,
in the model's channel order, and ``input_channels``); :func:`renormalise_input` then converts the
pipeline's input to it in a forward pre-hook, so the model cannot be run with the wrong one and its
module names and state-dict keys stay its own.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..base.normalisation import IMAGENET_MEAN as PIPELINE_MEAN
from ..base.normalisation import IMAGENET_STD as PIPELINE_STD

CHANNEL_ORDERS = ("rgb", "bgr")
# The pipeline's normalisation in the 0-255 units model zoos write it in (mmsegmentation's numbers).
IMAGENET_MEAN: tuple[float, float, float] = (123.675, 116.28, 103.53)
IMAGENET_STD: tuple[float, float, float] = (58.395, 57.12, 57.375)


class InputRenormalisation:
    """Forward pre-hook: ``x`` (pipeline-normalised RGB, ``B x 3 x H x W``) -> ``(pixel - mean) / std``
    in ``channels`` order, i.e. ``x[:, order] * scale + shift`` per channel."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], channels: str) -> None:
        self.order = [2, 1, 0] if channels == "bgr" else [0, 1, 2]
        self.scale = [255.0 * PIPELINE_STD[j] / std[i] for i, j in enumerate(self.order)]
        self.shift = [(255.0 * PIPELINE_MEAN[j] - mean[i]) / std[i] for i, j in enumerate(self.order)]

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        x, *rest = args
        scale = torch.tensor(self.scale, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        shift = torch.tensor(self.shift, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        if self.order != [0, 1, 2]:
            x = x[:, self.order]
        return (torch.addcmul(shift, x, scale), *rest)


def is_pipeline_normalisation(mean: Sequence[float], std: Sequence[float], channels: str) -> bool:
    """Whether ``mean``/``std``/``channels`` are what the pipeline already gives (no conversion)."""
    close = all(abs(a - b) <= 1e-6 * abs(b) for a, b in zip([*mean, *std], [*IMAGENET_MEAN, *IMAGENET_STD]))
    return channels == "rgb" and close


def renormalise_input(model: nn.Module, mean: Sequence[float], std: Sequence[float], channels: str) -> bool:
    """Make ``model`` convert its input to its own normalisation; returns whether it needed to."""
    if is_pipeline_normalisation(mean, std, channels):
        return False
    model.register_forward_pre_hook(InputRenormalisation(mean, std, channels))
    return True
