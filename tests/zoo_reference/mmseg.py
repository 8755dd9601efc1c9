"""Reference re-implementation of mmsegmentation's ResNetV1c-D8 PSPNet / DeepLabV3 / DeepLabV3+ (+ FCN aux).

Written from open-mmlab/mmsegmentation v0.18.0 (commit 8d49dd31e42680600f6169e52fc6c433aad51188):
``mmseg/models/backbones/resnet.py`` (ResNet, Bottleneck, ResNetV1c), ``mmseg/models/utils/res_layer.py``,
``mmseg/models/decode_heads/{decode_head,psp_head,aspp_head,sep_aspp_head,fcn_head}.py``,
``mmseg/models/segmentors/encoder_decoder.py`` and ``configs/_base_/models/{pspnet,deeplabv3,deeplabv3plus}_r50-d8.py``;
mmcv's ``ConvModule`` (``.conv``/``.bn``/``.activate``) and ``DepthwiseSeparableConvModule``
(``.depthwise_conv``/``.pointwise_conv``). The 1.x code (``res_layer.py``, ``encoder_decoder.py``) builds the same
modules under the same names. Plain PyTorch only; module names equal the source's, so ``state_dict()`` keys are
the zoo checkpoints' keys (SyncBN there -> BatchNorm2d here: same parameters/buffers, eps 1e-5).
"""

import time
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F


class ConvModule(nn.Module):
    """mmcv ConvModule with norm_cfg=BN, act_cfg=ReLU: conv (bias='auto' -> False) -> bn -> activate."""

    def __init__(self, cin, cout, k, stride=1, padding=0, dilation=1, groups=1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, padding, dilation, groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.activate = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.activate(self.bn(self.conv(x)))


class DepthwiseSeparableConvModule(nn.Module):
    """mmcv: depthwise ConvModule (groups=cin, BN+ReLU) then pointwise 1x1 ConvModule (BN+ReLU)."""

    def __init__(self, cin, cout, k, padding=0, dilation=1):
        super().__init__()
        self.depthwise_conv = ConvModule(cin, cin, k, padding=padding, dilation=dilation, groups=cin)
        self.pointwise_conv = ConvModule(cin, cout, 1)

    def forward(self, x):
        return self.pointwise_conv(self.depthwise_conv(x))


class Bottleneck(nn.Module):
    """style='pytorch': the stride sits on conv2 (3x3), padding = dilation."""

    expansion = 4

    def __init__(self, inplanes, planes, stride=1, dilation=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, dilation, dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


def res_layer(inplanes, planes, blocks, stride, dilation, contract_dilation):
    """mmseg ResLayer (avg_down=False, multi_grid=None): 1x1 strided conv + BN downsample."""
    downsample = None
    if stride != 1 or inplanes != planes * 4:
        downsample = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4))
    first = dilation // 2 if (dilation > 1 and contract_dilation) else dilation
    layers = [Bottleneck(inplanes, planes, stride, first, downsample)]
    layers += [Bottleneck(planes * 4, planes, 1, dilation) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


class ResNetV1c(nn.Module):
    """deep_stem=True (3x3 convs 3->32 s2, 32->32, 32->64; stem_channels 64), avg_down=False."""

    arch = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}

    def __init__(self, depth=50, strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4), contract_dilation=True):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 32, 3, 2, 1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 32, 3, 1, 1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 3, 1, 1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
        )
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = 64
        for i, blocks in enumerate(self.arch[depth]):
            planes = 64 * 2**i
            self.add_module(
                f"layer{i + 1}", res_layer(inplanes, planes, blocks, strides[i], dilations[i], contract_dilation)
            )
            inplanes = planes * 4

    def forward(self, x):
        x = self.maxpool(self.stem(x))
        outs = []
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            outs.append(x)
        return tuple(outs)  # out_indices=(0, 1, 2, 3)


def resize(x, size, align_corners):
    return F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)


class BaseDecodeHead(nn.Module):
    """conv_seg (1x1, bias) and Dropout2d(0.1) are registered first, as in BaseDecodeHead.__init__."""

    def __init__(self, in_channels, channels, num_classes, in_index, align_corners=False, dropout_ratio=0.1):
        super().__init__()
        self.in_channels, self.channels, self.in_index = in_channels, channels, in_index
        self.align_corners = align_corners
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        self.dropout = nn.Dropout2d(dropout_ratio) if dropout_ratio > 0 else None

    def cls_seg(self, feat):
        if self.dropout is not None:
            feat = self.dropout(feat)
        return self.conv_seg(feat)


class PSPHead(BaseDecodeHead):
    def __init__(self, pool_scales=(1, 2, 3, 6), **kw):
        super().__init__(**kw)
        self.psp_modules = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvModule(self.in_channels, self.channels, 1)) for s in pool_scales
        )
        self.bottleneck = ConvModule(self.in_channels + len(pool_scales) * self.channels, self.channels, 3, padding=1)

    def forward(self, inputs):
        x = inputs[self.in_index]
        outs = [x] + [resize(m(x), x.shape[2:], self.align_corners) for m in self.psp_modules]  # [x, 1, 2, 3, 6]
        return self.cls_seg(self.bottleneck(torch.cat(outs, 1)))


class ASPPHead(BaseDecodeHead):
    def __init__(self, dilations=(1, 12, 24, 36), **kw):
        super().__init__(**kw)
        self.dilations = dilations
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), ConvModule(self.in_channels, self.channels, 1))
        self.aspp_modules = nn.ModuleList(
            ConvModule(self.in_channels, self.channels, 1 if d == 1 else 3, padding=0 if d == 1 else d, dilation=d)
            for d in dilations
        )
        self.bottleneck = ConvModule((len(dilations) + 1) * self.channels, self.channels, 3, padding=1)

    def aspp(self, x):
        outs = [resize(self.image_pool(x), x.shape[2:], self.align_corners)]  # image pool FIRST
        outs += [m(x) for m in self.aspp_modules]
        return self.bottleneck(torch.cat(outs, 1))

    def forward(self, inputs):
        return self.cls_seg(self.aspp(inputs[self.in_index]))


class DepthwiseSeparableASPPHead(ASPPHead):
    def __init__(self, c1_in_channels=256, c1_channels=48, **kw):
        super().__init__(**kw)
        for i, d in enumerate(self.dilations):  # replaced in place: the dilation-1 branch stays a 1x1 ConvModule
            if d > 1:
                self.aspp_modules[i] = DepthwiseSeparableConvModule(self.in_channels, self.channels, 3, d, d)
        self.c1_bottleneck = ConvModule(c1_in_channels, c1_channels, 1)
        self.sep_bottleneck = nn.Sequential(
            DepthwiseSeparableConvModule(self.channels + c1_channels, self.channels, 3, padding=1),
            DepthwiseSeparableConvModule(self.channels, self.channels, 3, padding=1),
        )

    def forward(self, inputs):
        output = self.aspp(inputs[self.in_index])
        c1 = self.c1_bottleneck(inputs[0])
        output = resize(output, c1.shape[2:], self.align_corners)
        return self.cls_seg(self.sep_bottleneck(torch.cat([output, c1], 1)))


class FCNHead(BaseDecodeHead):
    """num_convs=1, kernel 3, concat_input=False (the auxiliary head of the d8 configs)."""

    def __init__(self, num_convs=1, **kw):
        super().__init__(**kw)
        convs = [
            ConvModule(self.in_channels if i == 0 else self.channels, self.channels, 3, padding=1)
            for i in range(num_convs)
        ]
        self.convs = nn.Sequential(*convs)

    def forward(self, inputs):
        return self.cls_seg(self.convs(inputs[self.in_index]))


class EncoderDecoder(nn.Module):
    """forward(x) == EncoderDecoder.encode_decode: decode-head logits resized to x's size (bilinear,
    align_corners=decode_head.align_corners=False). The auxiliary head is not used at test time."""

    def __init__(self, backbone, decode_head, auxiliary_head):
        super().__init__()
        self.backbone, self.decode_head, self.auxiliary_head = backbone, decode_head, auxiliary_head
        self.align_corners = decode_head.align_corners

    def forward(self, x):
        return resize(self.decode_head(self.backbone(x)), x.shape[2:], self.align_corners)

    def forward_aux(self, x):
        return resize(self.auxiliary_head(self.backbone(x)), x.shape[2:], self.align_corners)


def build(family: str, depth: int, num_classes: int) -> nn.Module:
    """``configs/_base_/models/{family}_r50-d8.py`` with ``backbone.depth=depth``."""
    head_kw = dict(in_channels=2048, channels=512, num_classes=num_classes, in_index=3, align_corners=False)
    if family == "pspnet":
        head = PSPHead(pool_scales=(1, 2, 3, 6), **head_kw)
    elif family == "deeplabv3":
        head = ASPPHead(dilations=(1, 12, 24, 36), **head_kw)
    elif family == "deeplabv3plus":
        head = DepthwiseSeparableASPPHead(c1_in_channels=256, c1_channels=48, dilations=(1, 12, 24, 36), **head_kw)
    else:
        raise ValueError(f"unknown family {family!r}")
    aux = FCNHead(num_convs=1, in_channels=1024, channels=256, num_classes=num_classes, in_index=2, align_corners=False)
    return EncoderDecoder(ResNetV1c(depth), head, aux)


# fmt: off
CITYSCAPES_CLASSES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                      "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
                      "motorcycle", "bicycle")
CITYSCAPES_PALETTE = [[128, 64, 128], [244, 35, 232], [70, 70, 70], [102, 102, 156], [190, 153, 153],
                      [153, 153, 153], [250, 170, 30], [220, 220, 0], [107, 142, 35], [152, 251, 152],
                      [70, 130, 180], [220, 20, 60], [255, 0, 0], [0, 0, 142], [0, 0, 70], [0, 60, 100],
                      [0, 80, 100], [0, 0, 230], [119, 11, 32]]
# fmt: on


def save_checkpoint(model: nn.Module, path, meta: dict | None = None, iters: int = 80000) -> None:
    """Write ``path`` as a released mmseg 0.x zoo file: mmcv.runner ``save_checkpoint`` -> ``{'meta', 'state_dict',
    'optimizer'}``, then ``tools/publish_model.py`` deletes ``'optimizer'`` and ``torch.save``s the rest.

    Checked: mmseg v0.18.0 ``tools/train.py`` sets ``checkpoint_config.meta = dict(mmseg_version, config,
    CLASSES, PALETTE)`` (and passes the runner ``meta`` with env_info/seed/exp_name); mmcv's IterBasedRunner adds
    ``iter``/``epoch``; mmcv ``save_checkpoint`` adds ``mmcv_version``/``time`` (and CLASSES from the model),
    unwraps DDP (no ``module.`` prefix), moves weights to CPU keeping ``state_dict._metadata``.
    ``tools/publish_model.py`` only drops ``optimizer``. Which meta keys a given 2020 release really has (e.g.
    env_info) and their values were not checked against a real file (none stored): the values below are stand-ins.
    mmseg 1.x ``init_model`` reads ``meta['dataset_meta']`` or else ``meta['CLASSES']``/``meta['PALETTE']``.
    """
    nc = model.decode_head.conv_seg.out_channels
    classes = CITYSCAPES_CLASSES if nc == 19 else tuple(f"class{i}" for i in range(nc))
    palette = CITYSCAPES_PALETTE if nc == 19 else [[(37 * i) % 256, (17 * i) % 256, (97 * i) % 256] for i in range(nc)]
    base = dict(
        mmseg_version="0.5.0+b2724da",
        config="# the training config's pretty_text",
        CLASSES=classes,
        PALETTE=palette,
        iter=iters,
        epoch=1,
        mmcv_version="1.0rc0",
        time=time.asctime(),
    )
    base.update(meta or {})
    state = model.state_dict()
    cpu = OrderedDict((k, v.detach().cpu()) for k, v in state.items())
    cpu._metadata = getattr(state, "_metadata", OrderedDict())
    torch.save({"meta": base, "state_dict": cpu}, path)
