import pytest
import torch

from segdistill import UserError, build_segmentor
from segdistill.models import KNOWN_BACKBONES, count_parameters


@pytest.mark.parametrize("backbone", KNOWN_BACKBONES)
@pytest.mark.parametrize("output_stride", [8, 16])
def test_backbones_dilate_to_output_stride(backbone, output_stride):
    model = build_segmentor("pspnet", backbone, num_classes=5, output_stride=output_stride, head_channels=16)
    feats = model.backbone(torch.zeros(1, 3, 64, 64))
    assert [f.shape[-1] for f in feats] == [64 // output_stride] * 2
    assert [f.shape[1] for f in feats] == list(model.backbone.channels)


@pytest.mark.parametrize("head", ["pspnet", "deeplabv3"])
def test_segmentor_outputs_and_named_taps(head):
    model = build_segmentor(head, "mobilenetv2_100", num_classes=7, head_channels=24)
    names = dict(model.named_modules())
    assert "head.bottleneck" in names and "head.classifier" in names
    captured = {}
    names["head.bottleneck"].register_forward_hook(lambda m, i, o: captured.__setitem__("feat", o))
    names["head.classifier"].register_forward_hook(lambda m, i, o: captured.__setitem__("logits", o))
    model.train()
    out = model(torch.randn(2, 3, 64, 96))
    assert out["out"].shape == (2, 7, 64, 96) and out["aux"].shape == (2, 7, 64, 96)
    assert captured["feat"].shape == (2, 24, 8, 12)
    assert captured["logits"].shape == (2, 7, 8, 12)
    model.eval()
    assert set(model(torch.randn(1, 3, 64, 96))) == {"out"}


def test_deeplabv3plus_reads_the_stride4_features():
    """DeepLabV3+ (mmsegmentation's layout): the penultimate features at stride 4, 48 low-level channels."""
    model = build_segmentor("deeplabv3plus", "mobilenetv2_100", num_classes=7, head_channels=24).train()
    names = dict(model.named_modules())
    captured = {}
    names["head.bottleneck"].register_forward_hook(lambda m, i, o: captured.__setitem__("feat", o))
    names["head.low_level"].register_forward_hook(lambda m, i, o: captured.__setitem__("low", o))
    out = model(torch.randn(2, 3, 64, 96))
    assert out["out"].shape == (2, 7, 64, 96) and out["aux"].shape == (2, 7, 64, 96)
    assert captured["feat"].shape == (2, 24, 16, 24) and captured["low"].shape == (2, 48, 16, 24)
    assert model.backbone.low_channels == 24 and len(model.backbone(torch.zeros(1, 3, 64, 64))) == 3


def test_aspp_without_projection_is_mmseg_layout():
    model = build_segmentor("deeplabv3", "mobilenetv2_100", num_classes=7, head_channels=24, aspp_projection=False)
    assert model.head.project is None and model.head.bottleneck[0].in_channels == 5 * 24
    assert model.eval()(torch.randn(1, 3, 64, 64))["out"].shape == (1, 7, 64, 64)


def test_psp_bottleneck_has_512_channels_by_default():
    model = build_segmentor("pspnet", "resnet18d", num_classes=19)
    assert model.head.bottleneck[0].out_channels == 512
    assert model.aux_head is not None and model.aux_head.classifier.out_channels == 19


def test_param_groups_split_backbone_and_heads():
    model = build_segmentor("pspnet", "mobilenetv2_100", num_classes=3, head_channels=16)
    backbone, head = model.param_groups()
    assert len(backbone) + len(head) == len(list(model.parameters()))
    assert sum(p.numel() for p in backbone) == count_parameters(model.backbone)


def test_bad_model_arguments_are_user_errors():
    with pytest.raises(UserError, match="unknown head"):
        build_segmentor("unet", "resnet18d", 19)
    with pytest.raises(UserError, match="unknown backbone 'resnet18x'"):
        build_segmentor("pspnet", "resnet18x", 19)
    with pytest.raises(UserError, match="not found"):
        build_segmentor("pspnet", "resnet18d", 19, pretrained="/nonexistent/weights.pth")
