"""torchvision detectors with FPN (Faster R-CNN, Mask R-CNN), built without downloading weights.

``build_detector(arch, backbone, num_classes, ...)`` returns a plain torchvision
``FasterRCNN`` / ``MaskRCNN``: its ``state_dict`` loads into torchvision's own constructors, and
``model.backbone(images)`` returns the FPN levels (``OrderedDict`` ``"0".."3"`` = P2..P5 for ResNets,
plus ``"pool"`` = P6), which is what APD taps.

From scratch (no ImageNet weights here), BatchNorm is trainable (``norm="bn"``); torchvision's
default for pretrained backbones is frozen BatchNorm (``norm="frozen_bn"``), which from scratch is
the identity and trains badly. Anchor sizes default to 16..256 (one per level), half of torchvision's
32..512, because the generated street scenes are 128 x 256 images with small objects.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN, mobilenet_backbone
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from ..base.schema import closest, fields_of
from ..errors import UserError

ARCHS = {"faster_rcnn": FasterRCNN, "mask_rcnn": MaskRCNN}
RESNETS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048}  # name -> layer4 channels
BACKBONES = (*RESNETS, "mobilenet_v3_large")
NORMS = {"bn": nn.BatchNorm2d, "frozen_bn": FrozenBatchNorm2d}
# Constructor arguments a config may not set through ``options`` (the builder owns them).
_OWNED = {
    "backbone",
    "num_classes",
    "min_size",
    "max_size",
    "rpn_anchor_generator",
    "box_head",
    "box_predictor",
    "mask_predictor",
}


def resnet_fpn(name: str, fpn_channels: int, norm: type[nn.Module]) -> BackboneWithFPN:
    """ResNet (torchvision, random init) + FPN on layer1..layer4 + a max-pooled P6."""
    body = getattr(torchvision.models, name)(weights=None, norm_layer=norm)
    last = RESNETS[name]
    in_channels = [last // 8, last // 4, last // 2, last]
    return_layers = {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"}
    return BackboneWithFPN(body, return_layers, in_channels, fpn_channels, extra_blocks=LastLevelMaxPool())


def build_backbone(name: str, fpn_channels: int = 256, norm: str = "bn") -> nn.Module:
    """An FPN backbone (``out_channels`` attribute set), all layers trainable."""
    if norm not in NORMS:
        raise UserError(f"unknown norm {norm!r}; use one of {', '.join(NORMS)}")
    if name in RESNETS:
        return resnet_fpn(name, fpn_channels, NORMS[norm])
    if name == "mobilenet_v3_large":
        if fpn_channels != 256:
            raise UserError("mobilenet_v3_large FPN has 256 channels in torchvision; set fpn_channels: 256")
        # stages at strides 4, 8, 16, 32 (+ P6), like the ResNet FPN; torchvision's default returns two
        # stride-32 maps, which would leave nothing for small objects (and for APD to pair by size)
        return mobilenet_backbone(
            backbone_name=name,
            weights=None,
            fpn=True,
            trainable_layers=6,
            norm_layer=NORMS[norm],
            returned_layers=[1, 2, 3, 5],
        )
    close = closest(name, BACKBONES)
    hint = f"did you mean {close[0]!r}?" if close else f"use one of {', '.join(BACKBONES)}"
    raise UserError(f"unknown detection backbone {name!r} ({hint})")


def _check_options(arch: str, options: dict[str, Any]) -> None:
    allowed = set(inspect.signature(FasterRCNN.__init__).parameters) - {"self", "kwargs"} - _OWNED
    if arch == "mask_rcnn":
        allowed |= set(inspect.signature(MaskRCNN.__init__).parameters) - {"self", "kwargs"} - _OWNED
    for key in options:
        if key not in allowed:
            close = closest(key, sorted(allowed))
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UserError(f"unknown detector option {key!r} for {arch}{hint}")


def build_detector(
    arch: str,
    backbone: str,
    num_classes: int,
    *,
    fpn_channels: int = 256,
    norm: str = "bn",
    min_size: int = 128,
    max_size: int = 256,
    anchor_sizes: list[int] | None = None,
    representation_size: int = 1024,
    options: dict[str, Any] | None = None,
) -> nn.Module:
    """A torchvision ``FasterRCNN`` or ``MaskRCNN`` (``arch``) with an FPN ``backbone``.

    ``num_classes`` counts the background. ``min_size``/``max_size``: torchvision's resize of the
    input (shorter side to ``min_size``, longer at most ``max_size``). ``anchor_sizes``: one size per
    FPN level (5: P2..P6). ``representation_size``: width of the box head's
    two fully connected layers (torchvision: 1024). ``options``: any other constructor argument
    (``box_batch_size_per_image``, ``rpn_post_nms_top_n_train``, ...)."""
    if arch not in ARCHS:
        raise UserError(f"unknown detector arch {arch!r}; use one of {', '.join(ARCHS)}")
    if num_classes < 2:
        raise UserError(f"a detector needs at least one category besides the background, got num_classes={num_classes}")
    options = dict(options or {})
    _check_options(arch, options)
    body = build_backbone(backbone, fpn_channels, norm)
    levels = 5  # P2..P5 + P6 for every backbone built here
    sizes = list(anchor_sizes) if anchor_sizes else [16 * 2**i for i in range(levels)]
    if len(sizes) != levels:
        raise UserError(f"anchor_sizes needs one size per FPN level ({levels} for {backbone}), got {sizes}")
    anchors = AnchorGenerator(tuple((s,) for s in sizes), ((0.5, 1.0, 2.0),) * levels)
    heads: dict[str, nn.Module] = {
        "box_head": TwoMLPHead(body.out_channels * 7 * 7, representation_size),
        "box_predictor": FastRCNNPredictor(representation_size, num_classes),
    }
    if arch == "mask_rcnn":  # torchvision's mask head ends in 256 channels
        heads["mask_predictor"] = MaskRCNNPredictor(256, 256, num_classes)
    return ARCHS[arch](body, min_size=min_size, max_size=max_size, rpn_anchor_generator=anchors, **heads, **options)


def fpn_shapes(
    model: nn.Module, size: tuple[int, int] = (128, 256), device: torch.device | str = "cpu"
) -> dict[str, tuple[int, ...]]:
    """``{level name: (C, h, w)}`` of the detector's FPN on one ``size`` input (eval mode, no grad;
    the model's mode is restored)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            features = model.backbone(torch.zeros(1, 3, *size, device=device))
    finally:
        model.train(was_training)
    return {name: tuple(f.shape[1:]) for name, f in features.items()}


# The DetectorConfig keys that build_detector takes as keyword arguments, under the same names.
DETECTOR_OPTIONS = ("fpn_channels", "norm", "min_size", "max_size", "anchor_sizes", "representation_size", "options")


def detector_from_config(cfg: Any, num_classes: int) -> nn.Module:
    """:func:`build_detector` from a detection model config section (``DetectorConfig``)."""
    return build_detector(cfg.arch, cfg.backbone, num_classes, **fields_of(cfg, DETECTOR_OPTIONS))
