"""What a zoo checkpoint's keys are called in segdistill: one :class:`Layout` per zoo and model family.

A layout maps each source key by the first matching ``(pattern, replacement)`` regular expression,
names the segdistill architecture that takes the result (the model section), and may rearrange a
weight whose layout differs (the ASPP concatenation order). Sources: mmsegmentation
(``mmseg/models/backbones/resnet.py`` ``ResNetV1c``, ``decode_heads/{psp,aspp,sep_aspp,fcn}_head.py``),
the APD release (``model/pspnet.py``, ``model/deeplabv3.py``, ``model/resnet.py``) and semseg
(``model/pspnet.py``, whose layout the release derives from), CIRKD
(``models/deeplabv3.py``, ``models/base_models/resnetv1b.py``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..input_norm import IMAGENET_MEAN, IMAGENET_STD

Rules = list[tuple[str, "str | Callable[[re.Match], str]"]]
Rewrite = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class Layout:
    """One zoo's model family: how to recognise its keys, map them, and build its architecture."""

    zoo: str
    source: str  # who wrote this layout, for messages: mmsegmentation, the APD release, semseg, CIRKD
    family: str  # pspnet | deeplabv3 | deeplabv3plus
    signature: tuple[str, ...]  # key prefixes every checkpoint of this family has
    absent: tuple[str, ...]  # key prefixes it never has (tells deeplabv3 from deeplabv3plus)
    rules: Rules
    section: dict  # model-section keys (the backbone name takes the depth: {depth})
    blocks_key: str  # the source prefix of layer3's blocks (counted to tell R50 from R101)
    rewrite: Rewrite | None = None
    adjust: Callable[[dict], dict] | None = None  # section keys that depend on e.g. the class count
    notes: tuple[str, ...] = field(default_factory=tuple)

    def map_key(self, key: str) -> str | None:
        for pattern, replacement in self.rules:
            if re.match(pattern, key):
                return re.sub(pattern, replacement, key, count=1)
        return None


def move_pool_last(weight_key: str) -> Rewrite:
    """mmsegmentation concatenates ``[image pool, ASPP branches...]``; segdistill ``[branches..., pool]``:
    move the image pool's input channels of ``weight_key`` (a conv over that concatenation) to the
    end. Exact: only the order of the conv's input slices changes."""

    def rewrite(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        weight = state[weight_key]
        channels = state["head.image_pool.1.0.weight"].shape[0]
        state[weight_key] = torch.cat([weight[:, channels:], weight[:, :channels]], dim=1).contiguous()
        return state

    return rewrite


def _conv_module(src: str, dst: str) -> Rules:
    """mmcv ``ConvModule`` (``.conv``, ``.bn``) -> our ``conv_bn_relu`` Sequential (``.0``, ``.1``)."""
    return [(rf"^{src}\.conv\.", f"{dst}.0."), (rf"^{src}\.bn\.", f"{dst}.1.")]


def _separable(src: str, dst: str) -> Rules:
    """mmcv ``DepthwiseSeparableConvModule`` -> our ``separable_conv_bn_relu``."""
    return _conv_module(rf"{src}\.depthwise_conv", rf"{dst}.0") + _conv_module(rf"{src}\.pointwise_conv", rf"{dst}.1")


IMAGENET_RGB = {"input_mean": list(IMAGENET_MEAN), "input_std": list(IMAGENET_STD), "input_channels": "rgb"}

# --- mmsegmentation: ResNetV1c-D8 (deep stem 32-32-64, conv downsample, contracted dilation) ----------
MMSEG_BACKBONE: Rules = [
    (r"^backbone\.stem\.(0|1|3|4|6)\.", r"backbone.body.conv1.\1."),
    (r"^backbone\.stem\.7\.", "backbone.body.bn1."),
    (r"^backbone\.(layer[1-4])\.", r"backbone.body.\1."),
    (r"^decode_head\.conv_seg\.", "head.classifier."),
    *_conv_module(r"auxiliary_head\.convs\.0", "aux_head.bottleneck"),
    (r"^auxiliary_head\.conv_seg\.", "aux_head.classifier."),
]
MMSEG_SECTION = {
    "backbone": "resnet{depth}c",
    "output_stride": 8,
    "head_channels": 512,
    "aux": True,
    "align_corners": False,
    "contract_dilation": True,
    **IMAGENET_RGB,
}
MMSEG_PSPNET = Layout(
    zoo="mmseg",
    source="mmsegmentation",
    family="pspnet",
    signature=("backbone.stem.", "decode_head.psp_modules."),
    absent=(),
    rules=MMSEG_BACKBONE
    + [
        (r"^decode_head\.psp_modules\.(\d)\.1\.conv\.", r"head.ppm.\1.1.0."),
        (r"^decode_head\.psp_modules\.(\d)\.1\.bn\.", r"head.ppm.\1.1.1."),
        *_conv_module(r"decode_head\.bottleneck", "head.bottleneck"),
    ],
    section={"head": "pspnet", **MMSEG_SECTION, "ppm_channels": 512},
    blocks_key="backbone.layer3.",
)
MMSEG_DEEPLABV3 = Layout(
    zoo="mmseg",
    source="mmsegmentation",
    family="deeplabv3",
    signature=("backbone.stem.", "decode_head.aspp_modules.", "decode_head.image_pool."),
    absent=("decode_head.c1_bottleneck.",),
    rules=MMSEG_BACKBONE
    + [
        *_conv_module(r"decode_head\.image_pool\.1", "head.image_pool.1"),
        *_conv_module(r"decode_head\.aspp_modules\.(\d)", r"head.branches.\1"),
        *_conv_module(r"decode_head\.bottleneck", "head.bottleneck"),
    ],
    section={"head": "deeplabv3", **MMSEG_SECTION, "aspp_projection": False},
    blocks_key="backbone.layer3.",
    rewrite=move_pool_last("head.bottleneck.0.weight"),
    notes=("the bottleneck's input channels are reordered: mmseg concatenates the image pool first",),
)
MMSEG_DEEPLABV3PLUS = Layout(
    zoo="mmseg",
    source="mmsegmentation",
    family="deeplabv3plus",
    signature=("backbone.stem.", "decode_head.aspp_modules.", "decode_head.c1_bottleneck."),
    absent=(),
    rules=MMSEG_BACKBONE
    + [
        *_conv_module(r"decode_head\.image_pool\.1", "head.image_pool.1"),
        *_conv_module(r"decode_head\.aspp_modules\.0", "head.branches.0"),
        *_separable(r"decode_head\.aspp_modules\.(\d)", r"head.branches.\1"),
        *_conv_module(r"decode_head\.bottleneck", "head.aspp_bottleneck"),
        *_conv_module(r"decode_head\.c1_bottleneck", "head.low_level"),
        *_separable(r"decode_head\.sep_bottleneck\.(\d)", r"head.bottleneck.\1"),
    ],
    section={"head": "deeplabv3plus", **MMSEG_SECTION},
    blocks_key="backbone.layer3.",
    rewrite=move_pool_last("head.aspp_bottleneck.0.weight"),
    notes=("the ASPP bottleneck's input channels are reordered: mmseg concatenates the image pool first",),
)

# --- the APD release (dvlab-research/APD) and semseg: deep-base ResNet 64-64-128 ---------------------
APD_BACKBONE: Rules = [
    (r"^layer0\.(0|1|3|4|6)\.", r"backbone.body.conv1.\1."),
    (r"^layer0\.7\.", "backbone.body.bn1."),
    (r"^(layer[1-4])\.", r"backbone.body.\1."),
    (r"^aux\.0\.", "aux_head.bottleneck.0."),
    (r"^aux\.1\.", "aux_head.bottleneck.1."),
    (r"^aux\.4\.", "aux_head.classifier."),
]
APD_SECTION = {
    "backbone": "resnet{depth}s",
    "output_stride": 8,
    "head_channels": 512,
    "aux": True,
    "align_corners": True,
    "contract_dilation": False,
    **IMAGENET_RGB,
}


def _apd_dilation(section: dict) -> dict:
    """The release dilates every block of layers 3 and 4 (semseg), except for PASCAL-Context
    (``classes == 60`` in ``model/pspnet.py``), where the first block keeps the previous dilation."""
    return {**section, "contract_dilation": section["num_classes"] == 60}


APD_PSPNET = Layout(
    zoo="apd",
    source="the APD release",
    family="pspnet",
    signature=("layer0.", "ppm.features.", "ppm.merge."),
    absent=(),
    rules=APD_BACKBONE
    + [
        (r"^ppm\.features\.(\d)\.1\.", r"head.ppm.\1.1.0."),
        (r"^ppm\.features\.(\d)\.2\.", r"head.ppm.\1.1.1."),
        (r"^ppm\.merge\.0\.", "head.bottleneck.0."),
        (r"^ppm\.merge\.1\.", "head.bottleneck.1."),
        (r"^cls\.0\.", "head.classifier."),
    ],
    section={"head": "pspnet", **APD_SECTION, "ppm_channels": 512},
    blocks_key="layer3.",
    adjust=_apd_dilation,
)
# hszhao/semseg's PSPNet, which the release's PSPNet derives from (and whose trained models users
# have): the 3x3 bottleneck sits in ``cls`` (``cls.0``/``cls.1``, the classifier ``cls.4``), not in
# ``ppm.merge``. The release's own teacher files load into its ``ppm.merge`` layout (APD_PSPNET).
SEMSEG_PSPNET = Layout(
    zoo="apd",
    source="semseg",
    family="pspnet",
    signature=("layer0.", "ppm.features.", "cls.4."),
    absent=("ppm.merge.",),
    rules=APD_BACKBONE
    + [
        (r"^ppm\.features\.(\d)\.1\.", r"head.ppm.\1.1.0."),
        (r"^ppm\.features\.(\d)\.2\.", r"head.ppm.\1.1.1."),
        (r"^cls\.0\.", "head.bottleneck.0."),
        (r"^cls\.1\.", "head.bottleneck.1."),
        (r"^cls\.4\.", "head.classifier."),
    ],
    section={"head": "pspnet", **APD_SECTION, "ppm_channels": 512},
    blocks_key="layer3.",
)
APD_DEEPLABV3 = Layout(
    zoo="apd",
    source="the APD release",
    family="deeplabv3",
    signature=("layer0.", "ppm.aspp_modules.", "ppm.image_pool."),
    absent=(),
    rules=APD_BACKBONE
    + [
        *_conv_module(r"ppm\.image_pool\.1", "head.image_pool.1"),
        *_conv_module(r"ppm\.aspp_modules\.(\d)", r"head.branches.\1"),
        *_conv_module(r"ppm\.bottleneck", "head.bottleneck"),
        (r"^cls\.0\.", "head.classifier."),
    ],
    section={"head": "deeplabv3", **APD_SECTION, "aspp_projection": False},
    blocks_key="layer3.",
    rewrite=move_pool_last("head.bottleneck.0.weight"),
    adjust=_apd_dilation,
    notes=("the bottleneck's input channels are reordered: the release concatenates the image pool first",),
)

# --- CIRKD (winycg/CIRKD): ResNetV1b deep stem 64-64-128 (``resnet*_v1s``), contracted dilation -----
CIRKD_BACKBONE: Rules = [
    (r"^pretrained\.conv1\.", "backbone.body.conv1.0."),
    (r"^pretrained\.bn1\.", "backbone.body.conv1.1."),
    (r"^pretrained\.conv2\.", "backbone.body.conv1.3."),
    (r"^pretrained\.bn2\.", "backbone.body.conv1.4."),
    (r"^pretrained\.conv3\.", "backbone.body.conv1.6."),
    (r"^pretrained\.bn3\.", "backbone.body.bn1."),
    (r"^pretrained\.(layer[1-4])\.", r"backbone.body.\1."),
    (r"^auxlayer\.block\.0\.", "aux_head.bottleneck.0."),
    (r"^auxlayer\.block\.1\.", "aux_head.bottleneck.1."),
    (r"^auxlayer\.block\.4\.", "aux_head.classifier."),
]
CIRKD_SECTION = {
    "backbone": "resnet{depth}s",
    "output_stride": 8,
    "aux": True,
    "align_corners": True,
    "contract_dilation": True,
    # dataset/cityscapes.py: cv2's BGR, 0-255, the Caffe mean subtracted, no division
    "input_mean": [104.00698793, 116.66876762, 122.67891434],
    "input_std": [1.0, 1.0, 1.0],
    "input_channels": "bgr",
}
CIRKD_DEEPLABV3 = Layout(
    zoo="cirkd",
    source="CIRKD",
    family="deeplabv3",
    signature=("pretrained.conv1.", "head.aspp."),
    absent=(),
    rules=CIRKD_BACKBONE
    + [
        (r"^head\.aspp\.b0\.", "head.branches.0."),
        (r"^head\.aspp\.b([1-3])\.block\.", r"head.branches.\1."),
        (r"^head\.aspp\.b4\.gap\.1\.", "head.image_pool.1.0."),
        (r"^head\.aspp\.b4\.gap\.2\.", "head.image_pool.1.1."),
        (r"^head\.aspp\.project\.", "head.project."),
        (r"^head\.block\.0\.", "head.bottleneck.0."),
        (r"^head\.block\.1\.", "head.bottleneck.1."),
        (r"^head\.block\.4\.", "head.classifier."),
    ],
    section={"head": "deeplabv3", **CIRKD_SECTION, "aspp_projection": True},
    blocks_key="pretrained.layer3.",
)
CIRKD_PSPNET = Layout(
    zoo="cirkd",
    source="CIRKD",
    family="pspnet",
    signature=("pretrained.conv1.", "head.psp."),
    absent=(),
    rules=CIRKD_BACKBONE
    + [
        (r"^head\.psp\.conv([1-4])\.", lambda m: f"head.ppm.{int(m.group(1)) - 1}.1."),
        (r"^head\.block\.0\.", "head.bottleneck.0."),
        (r"^head\.block\.1\.", "head.bottleneck.1."),
        (r"^head\.classifier\.", "head.classifier."),
    ],
    section={"head": "pspnet", **CIRKD_SECTION, "ppm_channels": 512},
    blocks_key="pretrained.layer3.",
)

LAYOUTS: list[Layout] = [
    MMSEG_PSPNET,
    MMSEG_DEEPLABV3,
    MMSEG_DEEPLABV3PLUS,
    APD_PSPNET,
    SEMSEG_PSPNET,
    APD_DEEPLABV3,
    CIRKD_DEEPLABV3,
    CIRKD_PSPNET,
]
