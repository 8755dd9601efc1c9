"""Segmentation heads: PSP (pyramid pooling), ASPP (DeepLabV3) and FCN (auxiliary).

Every head ends with two named modules that distillation taps by name:
``bottleneck`` (the penultimate features, ``B x channels x h x w``) and ``classifier``
(a 1x1 conv giving the logits, ``B x num_classes x h x w``), with dropout in between.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn_relu(in_ch: int, out_ch: int, kernel: int = 1, dilation: int = 1) -> nn.Sequential:
    padding = dilation * (kernel // 2)
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class PSPHead(nn.Module):
    """PSPNet head (Zhao et al., CVPR 2017): pyramid pooling at bins (1, 2, 3, 6), concat, 3x3 bottleneck.

    Input ``B x in_channels x h x w``; ``bottleneck`` output ``B x channels x h x w`` (512 in the paper);
    returns logits ``B x num_classes x h x w``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: int = 512,
        pool_scales: tuple[int, ...] = (1, 2, 3, 6),
        ppm_channels: int | None = None,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        ppm_channels = ppm_channels or in_channels // len(pool_scales)
        self.ppm = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(scale), conv_bn_relu(in_channels, ppm_channels)) for scale in pool_scales
        )
        self.bottleneck = conv_bn_relu(in_channels + len(pool_scales) * ppm_channels, channels, kernel=3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [F.interpolate(stage(x), size=size, mode="bilinear", align_corners=False) for stage in self.ppm]
        features = self.bottleneck(torch.cat([x, *pooled], dim=1))
        return self.classifier(self.dropout(features))


class ASPPHead(nn.Module):
    """DeepLabV3 head (Chen et al., 2017): ASPP (1x1, three atrous 3x3, image pooling), projection,
    3x3 ``bottleneck``, 1x1 ``classifier``. Dilations (12, 24, 36) at output stride 8, (6, 12, 18) at 16.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: int = 256,
        dilations: tuple[int, ...] = (12, 24, 36),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [conv_bn_relu(in_channels, channels)]
            + [conv_bn_relu(in_channels, channels, kernel=3, dilation=d) for d in dilations]
        )
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), conv_bn_relu(in_channels, channels))
        self.project = conv_bn_relu((len(dilations) + 2) * channels, channels)
        self.bottleneck = conv_bn_relu(channels, channels, kernel=3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = F.interpolate(self.image_pool(x), size=size, mode="bilinear", align_corners=False)
        features = self.project(torch.cat([b(x) for b in self.branches] + [pooled], dim=1))
        return self.classifier(self.dropout(self.bottleneck(features)))


class FCNHead(nn.Module):
    """FCN auxiliary head on backbone stage 3: 3x3 conv ``bottleneck`` + dropout + 1x1 ``classifier``."""

    def __init__(self, in_channels: int, num_classes: int, channels: int | None = None, dropout: float = 0.1):
        super().__init__()
        channels = channels or max(in_channels // 4, 32)
        self.bottleneck = conv_bn_relu(in_channels, channels, kernel=3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.bottleneck(x)))
