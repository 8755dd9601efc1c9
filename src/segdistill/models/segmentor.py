"""A segmentor = timm backbone + decode head (+ FCN auxiliary head on stage 3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .backbones import TimmBackbone
from .heads import ASPPHead, DeepLabV3PlusHead, FCNHead, PSPHead

HEADS = ("pspnet", "deeplabv3", "deeplabv3plus")


class Segmentor(nn.Module):
    """Backbone + head (+ auxiliary head).

    ``forward(x)`` with ``x: B x 3 x H x W`` returns a dict: ``"out"`` the logits upsampled to
    ``B x K x H x W`` (bilinear), and in training mode ``"aux"`` the auxiliary logits, also upsampled
    (the torchvision convention). Named modules for distillation taps: ``head.bottleneck`` (penultimate
    features) and ``head.classifier`` (logits at 1/output_stride), ``backbone`` stages via hooks.
    ``align_corners``: of those upsamplings (True for semseg / APD / CIRKD checkpoints).
    """

    def __init__(
        self,
        backbone: TimmBackbone,
        head: nn.Module,
        aux_head: nn.Module | None = None,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.aux_head = aux_head
        self.align_corners = align_corners
        self.aux_in_eval = False  # a teacher whose auxiliary logits are distilled (DIST) runs its aux head in eval

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        size = x.shape[-2:]
        features = self.backbone(x)
        stage3, stage4 = features[-2:]
        logits = self.head(stage4, features[0]) if isinstance(self.head, DeepLabV3PlusHead) else self.head(stage4)
        out = {"out": self._upsample(logits, size)}
        if self.aux_head is not None and (self.training or self.aux_in_eval):
            out["aux"] = self._upsample(self.aux_head(stage3), size)
        return out

    def _upsample(self, logits: torch.Tensor, size: torch.Size) -> torch.Tensor:
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=self.align_corners)

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
    align_corners: bool = False,
    contract_dilation: bool = True,
    aspp_projection: bool = True,
) -> Segmentor:
    """Build a segmentor, e.g. ``build_segmentor("pspnet", "resnet18d", 19)``.

    ``head``: ``"pspnet"`` (bottleneck 512 channels by default, as in the paper) or ``"deeplabv3"``
    (256). ``pretrained``: False, True (timm weights from the hub), or a path to a local weights file.
    ``aux``: an FCN auxiliary head on backbone stage 3 (its loss weight is set by the trainer, 0.4).
    ``backbone_kwargs``: passed to ``timm.create_model`` (e.g. a reduced width).
    ``align_corners``, ``contract_dilation``, ``aspp_projection``: the layout details in which the
    model zoos differ (see :mod:`segdistill.models.zoo`); the defaults are mmsegmentation's, except
    ``aspp_projection`` (torchvision's DeepLabV3; mmsegmentation's has none).
    """
    if num_classes < 1:
        raise UserError(f"num_classes must be positive, got {num_classes}")
    if head not in HEADS:
        raise UserError(f"unknown head {head!r}; choose one of: {', '.join(HEADS)}")
    body = TimmBackbone(
        backbone,
        output_stride=output_stride,
        pretrained=pretrained,
        low_level=head == "deeplabv3plus",
        contract_dilation=contract_dilation,
        **(backbone_kwargs or {}),
    )
    c3, c4 = body.channels
    dilations = (12, 24, 36) if output_stride == 8 else (6, 12, 18)
    if head == "pspnet":
        decode: nn.Module = PSPHead(
            c4,
            num_classes,
            channels=head_channels or 512,
            ppm_channels=ppm_channels,
            dropout=dropout,
            align_corners=align_corners,
        )
    elif head == "deeplabv3":
        decode = ASPPHead(
            c4,
            num_classes,
            channels=head_channels or 256,
            dilations=dilations,
            dropout=dropout,
            projection=aspp_projection,
        )
    else:
        assert body.low_channels is not None
        decode = DeepLabV3PlusHead(
            c4,
            body.low_channels,
            num_classes,
            channels=head_channels or 512,
            dilations=dilations,
            dropout=dropout,
            align_corners=align_corners,
        )
    aux_head = FCNHead(c3, num_classes, dropout=dropout) if aux else None
    return Segmentor(body, decode, aux_head, align_corners=align_corners)
