"""Reference re-implementation of CIRKD's DeepLabV3 / PSPNet on its dilated ResNetV1s (winycg/CIRKD).

Written from winycg/CIRKD: ``models/deeplabv3.py``, ``models/pspnet.py``, ``models/segbase.py``,
``models/base_models/resnetv1b.py`` (``ResNetV1b(deep_stem=True)`` = ``resnet{50,101}_v1s``, dilated=True),
``train_baseline.py`` (``save_checkpoint``), ``eval.py``. Two revisions differ only in the head widths:
  revision "v1": commit 2d8ad0f (2024-06-22; files unchanged since 7e0d21f, 2022-03-15) -- the code of the
      released ``deeplabv3_resnet101_citys_best_model.pth`` (README: val 78.07): ASPP/head width 256 for a
      2048-channel backbone; PSPNet head width 512.
  revision "v2": HEAD dab64dbb5e4172141166cf8434a80ce55d9d3aa7 (2025-08-30, "CIRKDV2"): ASPP/head width 512;
      PSPNet head width 256.
Plain PyTorch only; module names equal the source's, so ``state_dict()`` keys are the checkpoints' keys.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

WIDTHS = {"v1": {"deeplabv3": 256, "pspnet": 512}, "v2": {"deeplabv3": 512, "pspnet": 256}}


class BottleneckV1b(nn.Module):
    """Stride and dilation on conv2 (3x3, padding = dilation); ``previous_dilation`` is unused by Bottleneck."""

    expansion = 4

    def __init__(self, inplanes, planes, stride=1, dilation=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, dilation, dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(True)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResNetV1b(nn.Module):
    """deep_stem=True: conv1 3->64 s2, conv2 64->64, conv3 64->128 (each BN + relu1/2/3), maxpool;
    dilated=True: layer3 stride 1 dilation 2 (block 0: 1), layer4 stride 1 dilation 4 (block 0: 2)."""

    def __init__(self, layers):
        super().__init__()
        self.inplanes = 128
        self.conv1 = nn.Conv2d(3, 64, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu1 = nn.ReLU(True)
        self.conv2 = nn.Conv2d(64, 64, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.relu2 = nn.ReLU(True)
        self.conv3 = nn.Conv2d(64, 128, 3, 1, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(128)
        self.relu3 = nn.ReLU(True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=1, dilation=2)
        self.layer4 = self._make_layer(512, layers[3], stride=1, dilation=4)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))

    def _make_layer(self, planes, blocks, stride=1, dilation=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4)
            )
        first = 1 if dilation in (1, 2) else 2  # dilation 4 -> first block 2
        layers = [BottleneckV1b(self.inplanes, planes, stride, first, downsample)]
        self.inplanes = planes * 4
        layers += [BottleneckV1b(self.inplanes, planes, dilation=dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)


def conv_bn_relu(cin, cout, k=1, padding=0, dilation=1):
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=padding, dilation=dilation, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)
    )


class _FCNHead(nn.Module):
    def __init__(self, in_channels, channels):
        super().__init__()
        inter = in_channels // 4
        self.block = nn.Sequential(
            nn.Conv2d(in_channels, inter, 3, padding=1, bias=False),
            nn.BatchNorm2d(inter),
            nn.ReLU(inplace=True),
            nn.Dropout(0.1),
            nn.Conv2d(inter, channels, 1),
        )

    def forward(self, x):
        return self.block(x)


class _ASPPConv(nn.Module):
    def __init__(self, cin, cout, rate):
        super().__init__()
        self.block = conv_bn_relu(cin, cout, 3, rate, rate)

    def forward(self, x):
        return self.block(x)


class _AsppPooling(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.gap = nn.Sequential(nn.AdaptiveAvgPool2d(1), *conv_bn_relu(cin, cout))

    def forward(self, x):
        return F.interpolate(self.gap(x), x.shape[2:], mode="bilinear", align_corners=True)


class _ASPP(nn.Module):
    """b0 (1x1), b1..b3 (3x3, rates 12/24/36), b4 (image pool) concatenated in that order -> project
    (1x1 conv, BN, ReLU, Dropout(0.5))."""

    def __init__(self, cin, cout, rates=(12, 24, 36)):
        super().__init__()
        self.b0 = conv_bn_relu(cin, cout)
        self.b1, self.b2, self.b3 = (_ASPPConv(cin, cout, r) for r in rates)
        self.b4 = _AsppPooling(cin, cout)
        self.project = nn.Sequential(*conv_bn_relu(5 * cout, cout), nn.Dropout(0.5))

    def forward(self, x):
        return self.project(torch.cat([self.b0(x), self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1))


class _DeepLabHead(nn.Module):
    def __init__(self, cin, nclass, width):
        super().__init__()
        self.aspp = _ASPP(cin, width)
        self.block = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(True),
            nn.Dropout(0.1),
            nn.Conv2d(width, nclass, 1),
        )

    def forward(self, x):
        feat = self.block[0:4](self.aspp(x))
        return self.block[4](feat), feat


class _PyramidPooling(nn.Module):
    def __init__(self, cin):
        super().__init__()
        cout = cin // 4
        for i, s in enumerate((1, 2, 3, 6), 1):
            setattr(self, f"avgpool{i}", nn.AdaptiveAvgPool2d(s))
        for i in range(1, 5):
            setattr(self, f"conv{i}", conv_bn_relu(cin, cout))

    def forward(self, x):
        feats = [
            F.interpolate(
                getattr(self, f"conv{i}")(getattr(self, f"avgpool{i}")(x)),
                x.shape[2:],
                mode="bilinear",
                align_corners=True,
            )
            for i in range(1, 5)
        ]
        return torch.cat([x] + feats, 1)


class _PSPHead(nn.Module):
    def __init__(self, cin, nclass, width):
        super().__init__()
        self.psp = _PyramidPooling(cin)
        self.block = nn.Sequential(
            nn.Conv2d(cin * 2, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(True), nn.Dropout(0.1)
        )
        self.classifier = nn.Conv2d(width, nclass, 1)

    def forward(self, x):
        feat = self.block(self.psp(x))
        return self.classifier(feat), feat


class SegModel(nn.Module):
    """DeepLabV3 / PSPNet(SegBaseModel) with aux=True (set by every train/eval script for resnet backbones).
    forward returns the source's list ``[logits at 1/8 (not upsampled), aux logits, head feature]``."""

    def __init__(self, family, depth, nclass, revision="v1"):
        super().__init__()
        self.pretrained = ResNetV1b({50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}[depth])
        width = WIDTHS[revision][family]
        self.head = (_DeepLabHead if family == "deeplabv3" else _PSPHead)(2048, nclass, width)
        self.auxlayer = _FCNHead(1024, nclass)

    def forward(self, x):
        p = self.pretrained
        x = p.maxpool(p.relu3(p.bn3(p.conv3(p.relu2(p.bn2(p.conv2(p.relu1(p.bn1(p.conv1(x))))))))))
        c3 = p.layer3(p.layer2(p.layer1(x)))
        out, feat = self.head(p.layer4(c3))
        return [out, self.auxlayer(c3), feat]


def predict(model, x):
    """Main logits at the input size, as train_baseline.validation / eval.predict_whole do it."""
    return F.interpolate(model(x)[0], x.shape[2:], mode="bilinear", align_corners=True)


def build(family: str, depth: int, num_classes: int, revision: str = "v1") -> nn.Module:
    if family not in ("deeplabv3", "pspnet"):
        raise ValueError(f"unknown family {family!r}")
    return SegModel(family, depth, num_classes, revision)


def save_checkpoint(model: nn.Module, path) -> None:
    """train_baseline.py save_checkpoint: ``torch.save(model.state_dict(), filename)`` after ``model =
    model.module`` when distributed -> a plain state dict, no ``module.`` prefix, no wrapper dict; named
    ``{model}_{backbone}_{dataset}_best_model.pth``. Loaded strictly by get_deeplabv3/get_psp."""
    torch.save(model.state_dict(), path)
