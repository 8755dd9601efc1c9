"""A segmentor = timm backbone + decode head (+ FCN auxiliary head on stage 3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .backbones import TimmBackbone
from .heads import ASPPHead, FCNHead, PSPHead

HEADS = ("pspnet", "deeplabv3")


class Segmentor(nn.Module):
    """Backbone + head (+ auxiliary head).

    ``forward(x)`` with ``x: B x 3 x H x W`` returns a dict: ``"out"`` the logits upsampled to
    ``B x K x H x W`` (bilinear), and in training mode ``"aux"`` the auxiliary logits, also upsampled
    (the torchvision convention). Named modules for distillation taps: ``head.bottleneck`` (penultimate
    features) and ``head.classifier`` (logits at 1/output_stride), ``backbone`` stages via hooks.
    """

    def __init__(self, backbone: TimmBackbone, head: nn.Module, aux_head: nn.Module | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.aux_head = aux_head
        self.aux_in_eval = False  # a teacher whose auxiliary logits are distilled (DIST) runs its aux head in eval

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        size = x.shape[-2:]
        stage3, stage4 = self.backbone(x)
        out = {"out": F.interpolate(self.head(stage4), size=size, mode="bilinear", align_corners=False)}
        if self.aux_head is not None and (self.training or self.aux_in_eval):
            aux = self.aux_head(stage3)
            out["aux"] = F.interpolate(aux, size=size, mode="bilinear", align_corners=False)
        return out

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(backbone parameters, new-module parameters): the heads get the 10x learning rate."""
        backbone = list(self.backbone.parameters())
        ids = {id(p) for p in backbone}
        return backbone, [p for p in self.parameters() if id(p) not in ids]


def build_segmentor(
    head: str,
    backbone: str,
    num_classes: int,
    output_stride: int = 8,
    pretrained: bool | str = False,
    *,
    head_channels: int | None = None,
    ppm_channels: int | None = None,
    aux: bool = True,
    dropout: float = 0.1,
    backbone_kwargs: dict | None = None,
) -> Segmentor:
    """Build a segmentor, e.g. ``build_segmentor("pspnet", "resnet18d", 19)``.

    ``head``: ``"pspnet"`` (bottleneck 512 channels by default, as in the paper) or ``"deeplabv3"``
    (256). ``pretrained``: False, True (timm weights from the hub), or a path to a local weights file.
    ``aux``: an FCN auxiliary head on backbone stage 3 (its loss weight is set by the trainer, 0.4).
    ``backbone_kwargs``: passed to ``timm.create_model`` (e.g. a reduced width).
    """
    if num_classes < 1:
        raise UserError(f"num_classes must be positive, got {num_classes}")
    body = TimmBackbone(backbone, output_stride=output_stride, pretrained=pretrained, **(backbone_kwargs or {}))
    c3, c4 = body.channels
    if head == "pspnet":
        decode: nn.Module = PSPHead(
            c4, num_classes, channels=head_channels or 512, ppm_channels=ppm_channels, dropout=dropout
        )
    elif head == "deeplabv3":
        dilations = (12, 24, 36) if output_stride == 8 else (6, 12, 18)
        decode = ASPPHead(c4, num_classes, channels=head_channels or 256, dilations=dilations, dropout=dropout)
    else:
        raise UserError(f"unknown head {head!r}; choose one of: {', '.join(HEADS)}")
    aux_head = FCNHead(c3, num_classes, dropout=dropout) if aux else None
    return Segmentor(body, decode, aux_head)
