"""Reference re-implementation of the APD release's teachers/students (dvlab-research/APD).

Written from dvlab-research/APD at commit 4036315f69fff42f1a3db36057797fc710bf2447 (model files last changed in
42aeec4d): ``model/pspnet.py`` (class ``Model``: PPM with the 3x3 ``merge`` inside it, ``cls`` = one 1x1 conv),
``model/resnet.py`` (deep-base ResNet: 3x3 convs 3->64 s2, 64->64, 64->128), ``model/deeplabv3.py`` (class
``PSPNet`` whose ``ppm`` is an mmseg-style ``ASPPHead`` built from mmcv ``ConvModule``s), ``tool/train.py``
(DDP/DataParallel wrapping, ``torch.save({'epoch', 'state_dict', 'optimizer'})``). Plain PyTorch only; module
names equal the source's, so ``state_dict()`` keys are the release's keys (without the ``module.`` prefix, which
``save_checkpoint`` adds as the DDP-wrapped model's ``state_dict()`` has it).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


class Bottleneck(nn.Module):
    """torchvision-style: stride on conv2 (3x3, padding 1 until the dilation surgery)."""

    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(out + residual)


class ResNet(nn.Module):
    """model/resnet.py ResNet(deep_base=True); avgpool/fc exist there but are not taken into the segmentor."""

    def __init__(self, layers):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = nn.Conv2d(64, 64, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.conv3 = nn.Conv2d(64, 128, 3, 1, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(128)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.inplanes = 128
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], 2)
        self.layer3 = self._make_layer(256, layers[2], 2)
        self.layer4 = self._make_layer(512, layers[3], 2)

    def _make_layer(self, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4)
            )
        layers = [Bottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * 4
        layers += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)


def dilate(layer3, layer4, classes):
    """The release's surgery, as written (model/pspnet.py:71-109).

    classes != 60: every conv2 of layer3 -> dilation/padding 2, stride 1; of layer4 -> 4 (block 0 included);
    downsample.0 stride 1.  classes == 60 (PASCAL-Context): the strided 3x3 conv2 (block 0) -> stride 1,
    dilation 1; the other 3x3 convs -> dilation 2 (layer3) / 4 (layer4), block 0 of layer4 -> 2; downsample
    stride 1 -- i.e. mmseg-style contracted first dilation."""
    if classes == 60:
        for layer, (first, rest) in ((layer3, (1, 2)), (layer4, (2, 4))):
            for n, m in layer.named_modules():
                if "conv" in n:
                    if m.stride == (2, 2):
                        m.stride = (1, 1)
                        if m.kernel_size == (3, 3):
                            m.dilation = m.padding = (first, first)
                    elif m.kernel_size == (3, 3):
                        m.dilation = m.padding = (rest, rest)
                elif "downsample" in n:
                    m.stride = (1, 1)
    else:
        for layer, d in ((layer3, 2), (layer4, 4)):
            for n, m in layer.named_modules():
                if "conv2" in n:
                    m.dilation, m.padding, m.stride = (d, d), (d, d), (1, 1)
                elif "downsample.0" in n:
                    m.stride = (1, 1)


class PPM(nn.Module):
    def __init__(self, in_dim, reduction_dim, bins):
        super().__init__()
        self.features = nn.ModuleList(
            nn.Sequential(
                nn.AdaptiveAvgPool2d(b),
                nn.Conv2d(in_dim, reduction_dim, 1, bias=False),
                nn.BatchNorm2d(reduction_dim),
                nn.ReLU(inplace=True),
            )
            for b in bins
        )
        self.merge = nn.Sequential(
            nn.Conv2d(in_dim * 2, 512, 3, padding=1, bias=False),
            nn.BatchNorm2d(512),
            nn.ReLU(inplace=True),
            nn.Dropout2d(p=0.1),
        )

    def forward(self, x):
        out = [x] + [F.interpolate(f(x), x.shape[2:], mode="bilinear", align_corners=True) for f in self.features]
        return self.merge(torch.cat(out, 1))


class ConvModule(nn.Module):
    """mmcv ConvModule (norm_cfg=BN, act ReLU): conv (no bias) -> bn -> activate."""

    def __init__(self, cin, cout, k, padding=0, dilation=1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, 1, padding, dilation, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.activate = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.activate(self.bn(self.conv(x)))


class ASPPHead(nn.Module):
    """model/deeplabv3.py ASPPHead: mmseg's ASPP without conv_seg; dilations (1, 12, 24, 36), channels 512,
    image pool first in the concat, align_corners=True, Dropout2d(0.1) after the bottleneck."""

    def __init__(self, in_channels, channels=512, dilations=(1, 12, 24, 36)):
        super().__init__()
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), ConvModule(in_channels, channels, 1))
        self.aspp_modules = nn.ModuleList(
            ConvModule(in_channels, channels, 1 if d == 1 else 3, 0 if d == 1 else d, d) for d in dilations
        )
        self.bottleneck = ConvModule((len(dilations) + 1) * channels, channels, 3, padding=1)
        self.dropout = nn.Dropout2d(0.1)

    def forward(self, x):
        outs = [F.interpolate(self.image_pool(x), x.shape[2:], mode="bilinear", align_corners=True)]
        outs += [m(x) for m in self.aspp_modules]
        return self.dropout(self.bottleneck(torch.cat(outs, 1)))


class Model(nn.Module):
    """model/pspnet.py ``Model`` (family 'pspnet') or model/deeplabv3.py ``PSPNet`` (family 'deeplabv3').
    Eval forward returns the main logits only, upsampled to ((H-1)/8*zoom+1, (W-1)/8*zoom+1) with
    align_corners=True; the source asserts (H-1) % 8 == 0 and (W-1) % 8 == 0 (``check_size``)."""

    check_size = True

    def __init__(self, family="pspnet", layers=50, classes=19, zoom_factor=8, bins=(1, 2, 3, 6), dropout=0.1):
        super().__init__()
        resnet = ResNet({50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}[layers])
        self.zoom_factor = zoom_factor
        self.relu = nn.ReLU()
        self.layer0 = nn.Sequential(
            resnet.conv1,
            resnet.bn1,
            resnet.relu,
            resnet.conv2,
            resnet.bn2,
            resnet.relu,
            resnet.conv3,
            resnet.bn3,
            resnet.relu,
            resnet.maxpool,
        )
        self.layer1, self.layer2, self.layer3, self.layer4 = resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4
        dilate(self.layer3, self.layer4, classes)
        fea_dim = 2048
        self.ppm = PPM(fea_dim, fea_dim // len(bins), bins) if family == "pspnet" else ASPPHead(fea_dim)
        self.cls = nn.Sequential(nn.Conv2d(512, classes, 1))
        self.aux = nn.Sequential(
            nn.Conv2d(1024, 256, 3, padding=1, bias=False),
            nn.BatchNorm2d(256),
            nn.ReLU(inplace=True),
            nn.Dropout2d(p=dropout),
            nn.Conv2d(256, classes, 1),
        )

    def features(self, x):
        x3 = self.layer3(self.layer2(self.layer1(self.layer0(x))))
        return x3, self.layer4(x3)

    def forward(self, x):
        if self.check_size:
            assert (x.shape[2] - 1) % 8 == 0 and (x.shape[3] - 1) % 8 == 0
        h = int((x.shape[2] - 1) / 8 * self.zoom_factor + 1)
        w = int((x.shape[3] - 1) / 8 * self.zoom_factor + 1)
        _, x4 = self.features(x)
        out = self.cls(self.ppm(x4))
        if self.zoom_factor != 1:
            out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=True)
        return out

    def forward_aux(self, x):
        x3, _ = self.features(x)
        return F.interpolate(self.aux(x3), size=x.shape[2:], mode="bilinear", align_corners=True)


def build(family: str, depth: int, num_classes: int) -> nn.Module:
    if family not in ("pspnet", "deeplabv3"):
        raise ValueError(f"unknown family {family!r}")
    return Model(family, depth, num_classes)


def save_checkpoint(model: nn.Module, path, epoch: int = 200, base_lr: float = 0.005) -> None:
    """As tool/train.py:311/316/321 saves: ``torch.save({'epoch', 'state_dict': model.state_dict(), 'optimizer':
    optimizer.state_dict()})`` with ``model`` wrapped in DistributedDataParallel (multiprocessing_distributed:
    True in every released config) or DataParallel -> every key starts with ``module.``. The optimizer is the
    release's SGD(momentum 0.9, wd 1e-4) with 5 backbone groups at base_lr and 4 new groups at 10x (ppm, cls,
    aux, StuTransConv); its state is empty here (no step taken). The released teachers were trained outside this
    repo; tool/train.py:234 loads ``torch.load(t_weights)['state_dict']`` into the DDP-wrapped teacher with
    strict=False, so a usable teacher file has this same ``module.``-prefixed layout."""
    stu_trans = nn.Sequential(nn.Conv2d(512, 512, 1), nn.ReLU(inplace=True), nn.Conv2d(512, 512, 1))
    groups = [
        dict(params=m.parameters(), lr=base_lr)
        for m in (model.layer0, model.layer1, model.layer2, model.layer3, model.layer4)
    ]
    groups += [dict(params=m.parameters(), lr=base_lr * 10) for m in (model.ppm, model.cls, model.aux, stu_trans)]
    optimizer = torch.optim.SGD(groups, lr=base_lr, momentum=0.9, weight_decay=1e-4)
    state = {"module." + k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"epoch": epoch, "state_dict": state, "optimizer": optimizer.state_dict()}, path)
