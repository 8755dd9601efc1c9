"""Backbones: any timm model with ``features_only`` support, dilated to output stride 8 or 16."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn

from ..base.weights_io import load_weights_file
from ..errors import UserError

# Backbones we test; any other timm model with features_only and output_stride support also works.
KNOWN_BACKBONES = ("resnet18d", "resnet50d", "resnet101d", "mobilenetv2_100", "efficientnet_b0")


class TimmBackbone(nn.Module):
    """Returns the last two feature levels of a timm model: ``[stage3, stage4]``, and with
    ``low_level=True`` first the stride-4 level: ``[stage1, stage3, stage4]`` (for DeepLabV3+).

    Extra keyword arguments go to ``timm.create_model`` (e.g. ``channels=(32, 64, 128, 256),
    stem_width=16`` for a half-width ResNet; ``stem_type="deep", stem_width=64`` for the 64-64-128
    deep stem of the semseg / APD / CIRKD ResNets).

    With output stride 8 both are ``B x C_i x H/8 x W/8`` (the last two stages are dilated).
    ``channels`` gives ``(C_stage3, C_stage4)`` (``low_channels``: the stride-4 level's).

    ``contract_dilation=True`` (timm, mmsegmentation, CIRKD): the first block of a dilated stage
    keeps the previous stage's dilation. ``False`` (semseg / APD PSPNet): every 3x3 conv of the stage
    uses the stage's dilation; ResNet backbones only.
    """

    def __init__(
        self,
        name: str,
        output_stride: int = 8,
        pretrained: bool | str = False,
        *,
        low_level: bool = False,
        contract_dilation: bool = True,
        **timm_kwargs: object,
    ) -> None:
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise UserError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        kwargs: dict = {"features_only": True, "output_stride": output_stride, **timm_kwargs}
        if isinstance(pretrained, str) and pretrained not in ("", "true", "True"):
            path = Path(pretrained)
            if not path.is_file():
                raise UserError(f"pretrained backbone weights not found: {path}")
            _check_weights_file(path)
            kwargs["pretrained_cfg_overlay"] = {"file": str(path)}
            use_pretrained = True
        else:
            use_pretrained = bool(pretrained)
        if name not in timm.list_models():
            close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
            raise UserError(f"unknown backbone {name!r}; close timm names: {', '.join(close) or 'none'}")
        try:
            probe = timm.create_model(name, features_only=True, pretrained=False, **timm_kwargs)
            levels = len(probe.feature_info)
            kwargs["out_indices"] = (levels - 2, levels - 1)
            if low_level:
                kwargs["out_indices"] = (_stride4_level(probe.feature_info.reduction(), name), levels - 2, levels - 1)
            del probe
            self.body = timm.create_model(name, pretrained=use_pretrained, **kwargs)
        except TypeError as exc:  # an argument the timm model does not take
            raise UserError(f"backbone {name!r} does not accept {sorted(timm_kwargs)}: {exc}") from exc
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - network, or a cached file cut by an interrupted download
            detail = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise UserError(
                f"could not load pretrained weights for backbone {name!r} ({detail}); if a download was "
                "interrupted, delete the cached file (~/.cache/huggingface/hub or ~/.cache/torch/hub) and retry"
            ) from exc
        self.name = name
        self.output_stride = output_stride
        channels = tuple(self.body.feature_info.channels())
        self.low_channels: int | None = channels[0] if low_level else None
        self.channels: tuple[int, int] = channels[-2:]  # type: ignore[assignment]
        if not contract_dilation:
            _dilate_first_blocks(self.body, name)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.body(x)


def _check_weights_file(path: Path) -> None:
    """Load a local pretrained-weights file safely once (safetensors, or ``torch.load(weights_only=True)``)
    so that a file cut short by an interrupted download, or one carrying pickled code, is named."""
    try:
        load_weights_file(path)
    except UserError as exc:
        raise UserError(f"pretrained backbone weights: {exc} (an interrupted download? fetch the file again)") from exc


def _stride4_level(reductions: list[int], name: str) -> int:
    """Index of the feature level at stride 4 (DeepLabV3+'s low-level features)."""
    if 4 not in reductions:
        raise UserError(f"backbone {name!r} has no stride-4 feature level (DeepLabV3+ needs one): {reductions}")
    return reductions.index(4)


def _dilate_first_blocks(body: nn.Module, name: str) -> None:
    """semseg's dilation: the first block of each dilated ResNet stage gets the stage's dilation too
    (timm gives it the previous stage's). Bottleneck blocks dilate ``conv2``, basic blocks ``conv1``."""
    stages = [getattr(body, f"layer{i}", None) for i in (1, 2, 3, 4)]
    if any(stage is None or len(stage) < 2 for stage in stages):
        raise UserError(f"contract_dilation: false applies to ResNet backbones; {name!r} is not one")
    for stage in stages:
        first, second = stage[0], stage[1]
        conv = "conv2" if hasattr(first, "conv3") else "conv1"
        dilation = getattr(second, conv).dilation
        target = getattr(first, conv)
        if target.dilation != dilation:
            target.dilation, target.padding = dilation, dilation
