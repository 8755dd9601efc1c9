"""MGD (Masked Generative Distillation) against an independent formula written as loops in float64.

The reference (yzd-v/MGD ``seg/mmseg/distillation/losses/mgd.py``): ``a`` = 1x1 conv with bias when the
widths differ, a ``B x 1 x h x w`` random keep-mask, ``G`` = 3x3 conv, ReLU, 3x3 conv (biases), loss
``sum((G(M * a(f_s)) - f_t)^2) / B``. Convolutions are recomputed here pixel by pixel.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from segdistill import UserError
from segdistill.distill.mgd import MGDLoss, random_keep_mask

DT = torch.float64


def num(x: torch.Tensor) -> float:
    return float(x.detach())


def conv_loops(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``B x I x h x w`` -> ``B x O x h x w``: a ``k x k`` convolution (k odd) with zero padding ``k // 2``,
    one output value at a time (a dot product over the input channels per kernel tap)."""
    b, _, h, w = x.shape
    o, _, k, _ = weight.shape
    r = k // 2
    out = x.new_zeros(b, o, h, w)
    for n in range(b):
        for c in range(o):
            for y in range(h):
                for z in range(w):
                    value = bias[c].clone() if bias is not None else x.new_zeros(())
                    for dy in range(k):
                        for dz in range(k):
                            yy, zz = y + dy - r, z + dz - r
                            if 0 <= yy < h and 0 <= zz < w:
                                value = value + torch.dot(weight[c, :, dy, dz], x[n, :, yy, zz])
                    out[n, c, y, z] = value
    return out


def relu_loops(x: torch.Tensor) -> torch.Tensor:
    out = x.clone()
    for i, v in enumerate(x.flatten()):
        out.view(-1)[i] = v if v > 0 else 0.0
    return out


def ref_mgd(loss: MGDLoss, fs: torch.Tensor, ft: torch.Tensor, mask: torch.Tensor) -> float:
    """``(1 / B) sum_{b,c,y,x} (G(M * a(f_s)) - f_t)^2`` with the module's weights, all by loops."""
    with torch.no_grad():
        x = fs if loss.align is None else conv_loops(fs, loss.align.weight, loss.align.bias)
        b, c, h, w = x.shape
        masked = x.clone()
        for n in range(b):
            for y in range(h):
                for z in range(w):
                    if mask[n, 0, y, z] == 0:
                        masked[n, :, y, z] = 0.0
        first, _, second = loss.generation
        hidden = relu_loops(conv_loops(masked, first.weight, first.bias))
        gen = conv_loops(hidden, second.weight, second.bias)
        total = 0.0
        for n in range(b):
            for ch in range(c):
                for y in range(h):
                    for z in range(w):
                        total += float(gen[n, ch, y, z] - ft[n, ch, y, z]) ** 2
    return total / b


@pytest.mark.parametrize("cs", [3, 4])
def test_mgd_matches_formula(cs):
    """MGD = (1 / B) sum (G(M * a(f_s)) - f_t)^2 for a given mask (about half the positions masked); with
    C_s = C_t there is no align conv."""
    torch.manual_seed(0)
    loss = MGDLoss(cs, 4).double()
    fs, ft = torch.randn(2, cs, 4, 5, dtype=DT), torch.randn(2, 4, 4, 5, dtype=DT)
    mask = (torch.rand(2, 1, 4, 5) > 0.5).to(DT)
    assert 0 < mask.sum() < mask.numel()
    got = loss(fs, ft, mask=mask)["mgd"]
    assert got.dtype == DT
    assert num(got) == pytest.approx(ref_mgd(loss, fs, ft, mask), rel=1e-9)


def test_mgd_random_mask_is_the_global_rng_draw():
    """Without a mask the loss draws ``u ~ U[0, 1)`` of shape B x 1 x h x w from torch's global RNG and
    masks where ``u > 1 - ratio``: reseeding reproduces the loss, and equals the loss with that mask."""
    loss = MGDLoss(3, 4, mask_ratio=0.75).double()
    fs, ft = torch.randn(2, 3, 4, 5, dtype=DT), torch.randn(2, 4, 4, 5, dtype=DT)
    torch.manual_seed(5)
    first = loss(fs, ft)["mgd"]
    torch.manual_seed(5)
    again = loss(fs, ft)["mgd"]
    torch.manual_seed(5)
    u = torch.rand(2, 1, 4, 5)
    mask = torch.where(u > 1 - 0.75, 0.0, 1.0).to(DT)
    assert num(first) == num(again)
    assert num(first) == pytest.approx(num(loss(fs, ft, mask=mask)["mgd"]), rel=1e-12)


def test_random_keep_mask_ratio_and_shape():
    """The keep-mask is shared by all channels (B x 1 x h x w), 0/1, masking about ``ratio`` of positions."""
    torch.manual_seed(1)
    keep = random_keep_mask(4, 64, 64, 0.75, torch.device("cpu"), torch.float32)
    assert keep.shape == (4, 1, 64, 64)
    assert set(keep.unique().tolist()) <= {0.0, 1.0}
    assert float(1 - keep.mean()) == pytest.approx(0.75, abs=0.02)
    assert float(random_keep_mask(2, 8, 8, 0.0, torch.device("cpu"), torch.float32).min()) == 1.0


def test_mgd_modules():
    """A 1x1 align conv (with bias, as the release) only when the widths differ; the generation block is
    3x3 conv, ReLU, 3x3 conv at the teacher's width; all of them train with the student."""
    loss = MGDLoss(3, 6)
    assert isinstance(loss.align, nn.Conv2d) and loss.align.kernel_size == (1, 1) and loss.align.bias is not None
    assert (loss.align.in_channels, loss.align.out_channels) == (3, 6)
    first, act, second = loss.generation
    assert isinstance(act, nn.ReLU)
    for conv in (first, second):
        assert conv.kernel_size == (3, 3) and conv.padding == (1, 1) and conv.bias is not None
        assert (conv.in_channels, conv.out_channels) == (6, 6)
    assert MGDLoss(6, 6).align is None
    assert {id(p) for p in loss.student_parameters()} == {id(p) for p in loss.parameters()}
    assert loss.taps == ("feat",) and loss.terms == ("mgd",) and loss.mask_ratio == 0.75


def test_mgd_gradients_reach_student_and_modules_never_teacher():
    torch.manual_seed(2)
    loss = MGDLoss(3, 4).double()
    fs = torch.randn(2, 3, 4, 5, dtype=DT, requires_grad=True)
    ft = torch.randn(2, 4, 4, 5, dtype=DT, requires_grad=True)
    value = loss(fs, ft, mask=torch.ones(2, 1, 4, 5, dtype=DT))["mgd"]
    value.backward()
    assert fs.grad is not None and fs.grad.abs().sum() > 0 and torch.isfinite(fs.grad).all()
    assert ft.grad is None
    for name, p in loss.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_mgd_masked_positions_get_no_student_gradient():
    """The student's feature only enters through the kept positions (a 1x1 align is per position)."""
    torch.manual_seed(3)
    loss = MGDLoss(3, 4).double()
    fs = torch.randn(1, 3, 4, 5, dtype=DT, requires_grad=True)
    mask = torch.ones(1, 1, 4, 5, dtype=DT)
    mask[0, 0, 1, 2] = 0
    loss(fs, torch.randn(1, 4, 4, 5, dtype=DT), mask=mask)["mgd"].backward()
    assert fs.grad[0, :, 1, 2].abs().sum() == 0 and fs.grad.abs().sum() > 0


def test_mgd_float32_for_low_precision_inputs():
    loss = MGDLoss(3, 4)
    out = loss(torch.randn(1, 3, 4, 4).bfloat16(), torch.randn(1, 4, 4, 4).bfloat16())["mgd"]
    assert out.dtype == torch.float32 and torch.isfinite(out)


def test_mgd_bad_inputs():
    loss = MGDLoss(3, 4)
    with pytest.raises(UserError):
        loss(torch.randn(1, 3, 4, 4), torch.randn(1, 4, 4, 5))
    with pytest.raises(UserError):
        loss(torch.randn(1, 5, 4, 4), torch.randn(1, 4, 4, 4))
    with pytest.raises(UserError):
        loss(torch.randn(1, 3, 4, 4), torch.randn(1, 4, 4, 4), mask=torch.ones(1, 4, 4, 4))
    with pytest.raises(UserError):
        MGDLoss(3, 4, mask_ratio=1.5)
