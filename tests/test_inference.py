import pytest
import torch
from torch import nn

from segdistill.engine.inference import output_logits, predict, slide_logits


class PixelModel(nn.Module):
    """Logits depend only on each pixel's own value: every protocol must give the same argmax."""

    def __init__(self, classes: int = 4):
        super().__init__()
        self.proj = nn.Conv2d(3, classes, 1)
        torch.manual_seed(0)
        nn.init.normal_(self.proj.weight)

    def forward(self, x):
        return {"out": self.proj(x)}


def test_slide_equals_whole_for_a_pointwise_model():
    model = PixelModel()
    x = torch.randn(2, 3, 37, 53)
    whole = predict(model, x)
    slide = slide_logits(model, x, window=(16, 24), stride=(10, 16))
    assert torch.allclose(whole, slide, atol=1e-5)
    # window larger than the image: padded and cropped back
    big = slide_logits(model, x, window=(64, 64), stride=(40, 40))
    assert torch.allclose(whole, big, atol=1e-5)


def test_flip_and_scales_average_probabilities():
    model = PixelModel()
    x = torch.randn(1, 3, 32, 32)
    flipped = predict(model, x, flip=True)
    assert torch.allclose(flipped, predict(model, x).softmax(1), atol=1e-5)
    multi = predict(model, x, scales=(0.5, 1.0, 1.5), flip=True)
    assert multi.shape == (1, 4, 32, 32)
    assert torch.allclose(multi.sum(1), torch.ones(1, 32, 32), atol=1e-5)


def test_output_logits_accepts_common_output_types():
    t = torch.zeros(1, 2, 3, 3)
    assert output_logits(t) is t
    assert output_logits({"out": t, "aux": t}) is t
    assert output_logits((t, t)) is t
    assert output_logits({"logits": t}) is t  # a transformers SemanticSegmenterOutput is such a mapping
    with pytest.raises(ValueError):
        output_logits({"scores": t})
    with pytest.raises(ValueError):
        output_logits("not an output")


def test_split_output_finds_auxiliary_logits_and_skips_image_level_outputs():
    from segdistill.base.outputs import split_output

    main, aux, labels = torch.zeros(2, 5, 8, 8), torch.ones(2, 5, 8, 8), torch.zeros(2, 5)
    assert split_output({"out": main, "aux": aux}) == (main, [aux])
    assert split_output({"logits": main, "auxiliary_logits": aux}) == (main, [aux])
    got_main, got_aux = split_output((main, labels))  # smp with aux_params: (masks, image-level labels)
    assert got_main is main and got_aux == []
    got_main, got_aux = split_output([main, aux, labels])
    assert got_main is main and len(got_aux) == 1 and got_aux[0] is aux


def test_base_size_resizes_the_long_side_first():
    """``base_size`` B with scale s equals a plain scale of B * s / long side; scores at input size."""
    from segdistill.engine.inference import predict

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.AvgPool2d(2), torch.nn.Upsample(scale_factor=2)
    )
    images = torch.randn(2, 3, 32, 48)
    same = predict(net, images, base_size=48)
    assert torch.allclose(same, predict(net, images, scales=(1.0,), flip=False).softmax(1), atol=1e-6)
    half = predict(net, images, base_size=48, scales=(0.5, 1.0), flip=True)
    assert torch.allclose(half, predict(net, images, scales=(0.5, 1.0), flip=True), atol=1e-6)
    assert predict(net, images, base_size=24).shape == (2, 4, 32, 48)
