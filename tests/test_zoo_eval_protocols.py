"""The zoos' evaluation protocols: semseg / the APD release's sliding window (softmax per window,
flip inside each window, centred padding) and mmsegmentation's keep-ratio resize, each checked
against an independent loop written from the source's description (tests/zoo_reference/FACTS.md)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segdistill.config import load_config
from segdistill.engine.evaluator import protocol
from segdistill.engine.inference import keep_ratio_factor, predict
from segdistill.errors import UserError


class TinyNet(nn.Module):
    """A position-sensitive segmentation net (not flip-equivariant), logits at the input size (as the
    zoo models return them)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 5, 3, padding=1)
        self.mix = nn.Conv2d(5, 5, (1, 3), padding=(0, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(torch.tanh(self.conv(x))) * 3


def semseg_net_process(model: nn.Module, crop: torch.Tensor, flip: bool) -> torch.Tensor:
    """semseg ``tool/test.py`` net_process: [x, flip(x)] -> logits (at the crop size) -> softmax -> mean."""
    batch = torch.cat([crop, crop.flip(3)], 0) if flip else crop
    out = model(batch).softmax(1)
    return (out[0] + out[1].flip(2)) / 2 if flip else out[0]


def semseg_scale_process(model: nn.Module, image: torch.Tensor, crop: int, flip: bool) -> torch.Tensor:
    """semseg ``scale_process`` for one image ``1 x 3 x H x W`` (already normalised: the mean colour is 0)."""
    _, _, h, w = image.shape
    pad_h, pad_w = max(crop - h, 0), max(crop - w, 0)
    pad_h_half, pad_w_half = pad_h // 2, pad_w // 2
    padded = torch.zeros(1, 3, h + pad_h, w + pad_w)
    padded[:, :, pad_h_half : pad_h_half + h, pad_w_half : pad_w_half + w] = image
    new_h, new_w = padded.shape[2:]
    stride = math.ceil(crop * 2 / 3)
    grid_h = math.ceil((new_h - crop) / stride) + 1
    grid_w = math.ceil((new_w - crop) / stride) + 1
    prediction = torch.zeros(5, new_h, new_w)
    count = torch.zeros(new_h, new_w)
    for i in range(grid_h):
        for j in range(grid_w):
            e_h = min(i * stride + crop, new_h)
            e_w = min(j * stride + crop, new_w)
            s_h, s_w = e_h - crop, e_w - crop
            count[s_h:e_h, s_w:e_w] += 1
            prediction[:, s_h:e_h, s_w:e_w] += semseg_net_process(model, padded[:, :, s_h:e_h, s_w:e_w], flip)
    prediction /= count
    return prediction[:, pad_h_half : pad_h_half + h, pad_w_half : pad_w_half + w]


@pytest.mark.parametrize("size", [(40, 57), (17, 30), (30, 12)])  # larger than the window; smaller (padded)
@pytest.mark.parametrize("flip", [True, False])
def test_window_softmax_is_semseg_protocol(size: tuple[int, int], flip: bool) -> None:
    model = TinyNet().eval()
    image = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1))
    crop = 21
    stride = math.ceil(crop * 2 / 3)
    ours = predict(model, image, "slide", (crop, crop), (stride, stride), flip=flip, window_merge="softmax")
    expected = semseg_scale_process(model, image, crop, flip)
    assert (ours[0] - expected).abs().max().item() < 1e-6
    logits_merge = predict(model, image, "slide", (crop, crop), (stride, stride), flip=flip)
    assert not torch.allclose(logits_merge, ours, atol=1e-3)  # the two merges differ: the option matters


def test_keep_ratio_is_mmseg_resize() -> None:
    """mmcv ``rescale_size`` with keep_ratio: scale = min(long / long side, short / short side)."""
    assert keep_ratio_factor((1024, 2048), (2048, 1024)) == 1.0  # Cityscapes stays as it is
    assert keep_ratio_factor((375, 500), (2048, 512)) == pytest.approx(512 / 375)  # ADE20K: short side 512
    assert keep_ratio_factor((300, 1500), (2048, 512)) == pytest.approx(2048 / 1500)  # the long side binds
    assert keep_ratio_factor((333, 500), (520, 520)) == pytest.approx(520 / 500)  # PASCAL-Context
    model = TinyNet().eval()
    image = torch.randn(1, 3, 15, 20, generator=torch.Generator().manual_seed(2))
    resized = F.interpolate(image, size=(24, 32), mode="bilinear", align_corners=False)  # x 1.6
    logits = F.interpolate(model(resized), size=(24, 32), mode="bilinear", align_corners=False)
    expected = F.interpolate(logits, size=(15, 20), mode="bilinear", align_corners=False).softmax(1)
    ours = predict(model, image, "whole", keep_ratio=(32, 24))
    assert (ours - expected).abs().max().item() < 1e-6


def test_protocol_keys_reach_the_evaluator_and_conflicts_are_named() -> None:
    config = load_config(None, ["eval.mode=slide", "eval.window_merge=softmax", "eval.keep_ratio=[2048,512]"])
    assert protocol(config)["window_merge"] == "softmax" and protocol(config)["keep_ratio"] == [2048, 512]
    with pytest.raises(UserError, match="eval.keep_ratio and eval.base_size"):
        load_config(None, ["eval.keep_ratio=[2048,512]", "eval.base_size=512"])
    with pytest.raises(UserError, match="eval.window_merge"):
        load_config(None, ["eval.window_merge=mean"])
