"""Segmentation heads: PSP (pyramid pooling), ASPP (DeepLabV3), DeepLabV3+ and FCN (auxiliary).

Every head ends with two named modules that distillation taps by name:
``bottleneck`` (the penultimate features, ``B x channels x h x w``) and ``classifier``
(a 1x1 conv giving the logits, ``B x num_classes x h x w``), with dropout in between.

``align_corners`` is the bilinear resize of pooled features back to the feature size: False as in
mmsegmentation and torchvision, True in the semseg / APD / CIRKD code (their checkpoints need it).
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
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        self.align_corners = align_corners
        ppm_channels = ppm_channels or in_channels // len(pool_scales)
        self.ppm = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(scale), conv_bn_relu(in_channels, ppm_channels)) for scale in pool_scales
        )
        self.bottleneck = conv_bn_relu(in_channels + len(pool_scales) * ppm_channels, channels, kernel=3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [
            F.interpolate(stage(x), size=size, mode="bilinear", align_corners=self.align_corners) for stage in self.ppm
        ]
        features = self.bottleneck(torch.cat([x, *pooled], dim=1))
        return self.classifier(self.dropout(features))


class ASPPHead(nn.Module):
    """DeepLabV3 head (Chen et al., 2017): ASPP (1x1, three atrous 3x3, image pooling), then 3x3
    ``bottleneck``, 1x1 ``classifier``. Dilations (12, 24, 36) at output stride 8, (6, 12, 18) at 16.

    ``projection=True`` (torchvision, CIRKD): a 1x1 ``project`` conv fuses the five branches before the
    bottleneck. ``projection=False`` (mmsegmentation's ``ASPPHead``): the 3x3 bottleneck reads the
    concatenation directly. The concatenation order is ``branches..., image pool``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: int = 256,
        dilations: tuple[int, ...] = (12, 24, 36),
        dropout: float = 0.1,
        projection: bool = True,
    ) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [conv_bn_relu(in_channels, channels)]
            + [conv_bn_relu(in_channels, channels, kernel=3, dilation=d) for d in dilations]
        )
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), conv_bn_relu(in_channels, channels))
        concat = (len(dilations) + 2) * channels
        self.project = conv_bn_relu(concat, channels) if projection else None
        self.bottleneck = conv_bn_relu(channels if projection else concat, channels, kernel=3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.bottleneck(self.fuse(x))))

    def fuse(self, x: torch.Tensor) -> torch.Tensor:
        """The ASPP branches and image pool concatenated (and projected): the bottleneck's input."""
        size = x.shape[-2:]
        # a 1x1 map resized is a constant map whatever align_corners says
        pooled = F.interpolate(self.image_pool(x), size=size, mode="bilinear", align_corners=False)
        features = torch.cat([b(x) for b in self.branches] + [pooled], dim=1)
        return features if self.project is None else self.project(features)


def separable_conv_bn_relu(in_ch: int, out_ch: int, dilation: int = 1) -> nn.Sequential:
    """Depthwise 3x3 conv + BN + ReLU, then pointwise 1x1 conv + BN + ReLU (mmcv's
    ``DepthwiseSeparableConvModule`` with its defaults)."""
    return nn.Sequential(
        nn.Sequential(
            nn.Conv2d(in_ch, in_ch, 3, padding=dilation, dilation=dilation, groups=in_ch, bias=False),
            nn.BatchNorm2d(in_ch),
            nn.ReLU(inplace=True),
        ),
        conv_bn_relu(in_ch, out_ch),
    )


class DeepLabV3PlusHead(nn.Module):
    """DeepLabV3+ head (Chen et al., ECCV 2018) in mmsegmentation's layout
    (``DepthwiseSeparableASPPHead``): ASPP with depthwise-separable atrous branches and image pooling,
    a 3x3 ``aspp_bottleneck``; the stride-4 backbone features through a 1x1 ``low_level`` conv
    (48 channels); the ASPP output resized to stride 4 and concatenated; two separable 3x3 convs
    (``bottleneck``, the penultimate features ``B x channels x H/4 x W/4``); ``classifier``.

    ``forward(x, low)``: ``x`` the last stage ``B x in_channels x h x w``, ``low`` the stride-4 stage
    ``B x low_channels x H/4 x W/4``; returns logits ``B x num_classes x H/4 x W/4``.
    """

    def __init__(
        self,
        in_channels: int,
        low_channels: int,
        num_classes: int,
        channels: int = 512,
        dilations: tuple[int, ...] = (12, 24, 36),
        low_level_channels: int = 48,
        dropout: float = 0.1,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        self.align_corners = align_corners
        self.branches = nn.ModuleList(
            [conv_bn_relu(in_channels, channels)]
            + [separable_conv_bn_relu(in_channels, channels, dilation=d) for d in dilations]
        )
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), conv_bn_relu(in_channels, channels))
        self.aspp_bottleneck = conv_bn_relu((len(dilations) + 2) * channels, channels, kernel=3)
        self.low_level = conv_bn_relu(low_channels, low_level_channels)
        self.bottleneck = nn.Sequential(
            separable_conv_bn_relu(channels + low_level_channels, channels),
            separable_conv_bn_relu(channels, channels),
        )
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = F.interpolate(self.image_pool(x), size=size, mode="bilinear", align_corners=self.align_corners)
        aspp = self.aspp_bottleneck(torch.cat([b(x) for b in self.branches] + [pooled], dim=1))
        low = self.low_level(low)
        aspp = F.interpolate(aspp, size=low.shape[-2:], mode="bilinear", align_corners=self.align_corners)
        return self.classifier(self.dropout(self.bottleneck(torch.cat([aspp, low], dim=1))))


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
