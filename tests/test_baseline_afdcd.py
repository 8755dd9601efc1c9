"""Af-DCD (augmentation-free dense contrastive distillation) against independent formulas in float64.

The reference (OSVAI/Af-DCD ``losses/ocmgd.py``): the generated map ``g = P(M * a(f_s))`` gives
``fd = sum((g - f_t)^2) / B`` and the omni-contrastive term: max-pool both maps, cut them into windows,
split each position's channels into groups; each student (position, group) sample is contrasted against
the teacher's sample at the same position and group (positive) and the teacher's samples of the other
groups at every position of the window (negatives), similarity ``-L1 / tau``; the cross-entropies are
summed and divided by ``B * h' * w'``. Here every sum is a Python loop over images, windows and samples.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from segdistill import UserError
from segdistill.distill.afdcd import AfDCDLoss, EnhancedProjector, center_keep_mask

DT = torch.float64


def num(x: torch.Tensor) -> float:
    return float(x.detach())


# ----------------------------------------------------------------------------- naive helpers


def conv_loops(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """A ``k x k`` convolution (k odd, zero padding ``k // 2``) one output value at a time."""
    weight, bias = conv.weight, conv.bias
    b, _, h, w = x.shape
    o, _, k, _ = weight.shape
    r = k // 2
    out = x.new_zeros(b, o, h, w)
    for n in range(b):
        for c in range(o):
            for y in range(h):
                for z in range(w):
                    value = bias[c].clone()
                    for dy in range(k):
                        for dz in range(k):
                            yy, zz = y + dy - r, z + dz - r
                            if 0 <= yy < h and 0 <= zz < w:
                                value = value + torch.dot(weight[c, :, dy, dz], x[n, :, yy, zz])
                    out[n, c, y, z] = value
    return out


def relu(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x > 0, x, torch.zeros_like(x))


def generated_loops(loss: AfDCDLoss, fs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``P(M * a(f_s))`` with the module's weights, by loops (plain or enhanced projector)."""
    x = fs if loss.align is None else conv_loops(fs, loss.align)
    x = x * mask
    if isinstance(loss.projector, EnhancedProjector):
        p = loss.projector
        x1 = relu(conv_loops(x, p.block1))
        x2 = relu(conv_loops(x1, p.block2))
        return (conv_loops(x1, p.adapt1) + conv_loops(x2, p.adapt2)) / 2
    first, _, second = loss.projector
    return conv_loops(relu(conv_loops(x, first)), second)


def ref_fd(g: torch.Tensor, ft: torch.Tensor) -> float:
    b = g.shape[0]
    total = 0.0
    for v_g, v_t in zip(g.flatten().tolist(), ft.flatten().tolist()):
        total += (v_g - v_t) ** 2
    return total / b


def max_pool_loops(x: torch.Tensor, size: int) -> torch.Tensor:
    """Non-overlapping ``size x size`` max pooling, floor mode (a partial border window is dropped)."""
    b, c, h, w = x.shape
    out = x.new_zeros(b, c, h // size, w // size)
    for n in range(b):
        for ch in range(c):
            for i in range(h // size):
                for j in range(w // size):
                    out[n, ch, i, j] = max(
                        float(x[n, ch, y, z])
                        for y in range(i * size, (i + 1) * size)
                        for z in range(j * size, (j + 1) * size)
                    )
    return out


def ref_ctr(g: torch.Tensor, ft: torch.Tensor, pool: int, patch: int, groups: int, tau: float) -> float:
    """The omni-contrastive term by loops: windows of ``patch x patch`` pooled positions (only whole
    windows, from the top-left), samples = (position, channel group), InfoNCE with -L1 similarity."""
    if pool > 1:
        g, ft = max_pool_loops(g, pool), max_pool_loops(ft, pool)
    b, c, h, w = g.shape
    d = c // groups
    rows, cols = h // patch, w // patch

    def sample(x, n, y, z, k):
        return x[n, k * d : (k + 1) * d, y, z]

    total = 0.0
    for n in range(b):
        for wi in range(rows):
            for wj in range(cols):
                cells = [(wi * patch + a, wj * patch + e) for a in range(patch) for e in range(patch)]
                for y, z in cells:
                    for k in range(groups):
                        anchor = sample(g, n, y, z, k)
                        positive = -float((anchor - sample(ft, n, y, z, k)).abs().sum()) / tau
                        candidates = [positive]
                        for y2, z2 in cells:
                            for k2 in range(groups):
                                if k2 != k:
                                    candidates.append(-float((anchor - sample(ft, n, y2, z2, k2)).abs().sum()) / tau)
                        top = max(candidates)
                        log_sum = top + math.log(sum(math.exp(v - top) for v in candidates))
                        total += log_sum - positive
    return total / (b * rows * patch * cols * patch)


# ----------------------------------------------------------------------------- the two terms


@pytest.mark.parametrize("enhanced", [False, True])
def test_afdcd_terms_match_formula(enhanced):
    """fd = (1 / B) sum (g - f_t)^2 and ctr = the loop InfoNCE on the same generated map g, for a given
    mask, channel counts that differ (1x1 align) and a 10 x 9 map: pooled 5 x 4, cut to one 4 x 4 block of
    2 x 2 windows."""
    torch.manual_seed(0)
    loss = AfDCDLoss(3, 4, enhanced_projector=enhanced, groups=2, pool=2, patch=2, tau=0.5).double()
    fs, ft = torch.randn(2, 3, 10, 9, dtype=DT), torch.randn(2, 4, 10, 9, dtype=DT)
    mask = (torch.rand(2, 1, 10, 9) > 0.5).to(DT)
    out = loss(fs, ft, mask=mask)
    with torch.no_grad():
        g = generated_loops(loss, fs, mask)
    assert out["afdcd_fd"].dtype == DT
    assert num(out["afdcd_fd"]) == pytest.approx(ref_fd(g, ft), rel=1e-9)
    assert num(out["afdcd_ctr"]) == pytest.approx(ref_ctr(g, ft, 2, 2, 2, 0.5), rel=1e-9)


@pytest.mark.parametrize("windows_per_chunk", [None, 1, 3])
@pytest.mark.parametrize(("pool", "patch", "groups"), [(2, 2, 2), (1, 3, 3), (0, 2, 1)])
def test_afdcd_contrast_matches_formula(pool, patch, groups, windows_per_chunk):
    """The contrastive term alone on given maps, for several pool / window / group settings (pool 0 or 1:
    no pooling; groups 1: no negatives, so every cross-entropy is 0) and chunkings (None: all windows at
    once)."""
    torch.manual_seed(1)
    c = 2 * groups
    loss = AfDCDLoss(c, c, groups=groups, pool=pool, patch=patch, tau=0.3, windows_per_chunk=windows_per_chunk)
    g = torch.randn(2, c, 7, 8, dtype=DT, requires_grad=True)
    ft = torch.randn(2, c, 7, 8, dtype=DT)
    got = loss.double().contrast(g, ft)
    assert num(got) == pytest.approx(ref_ctr(g.detach(), ft, pool, patch, groups, 0.3), rel=1e-9, abs=1e-12)


def test_afdcd_contrast_release_defaults():
    """At the release's defaults (pool 4, 4 x 4 windows, 16 groups, tau 0.07) the term equals a vectorised
    restatement of the release: samples laid out window by window as (position, group), positives on the
    diagonal of the -L1 matrix, negatives where the groups differ, CE summed / (B h' w')."""
    torch.manual_seed(2)
    loss = AfDCDLoss(8, 32).double()
    assert (loss.tau, loss.groups, loss.pool, loss.patch, loss.mask_ratio) == (0.07, 16, 4, (4, 4), 0.75)
    g, ft = torch.randn(2, 32, 32, 48, dtype=DT), torch.randn(2, 32, 32, 48, dtype=DT)
    pg, pt = torch.nn.functional.max_pool2d(g, 4), torch.nn.functional.max_pool2d(ft, 4)
    b, c, h, w = pg.shape

    def windows(x):  # B x C x h x w -> (B * windows) x (16 positions * 16 groups) x (C / 16)
        x = x.reshape(b, c, h // 4, 4, w // 4, 4).permute(0, 2, 4, 3, 5, 1)  # B, wr, wc, 4, 4, C
        return x.reshape(b * (h // 4) * (w // 4), 16, 16, c // 16).reshape(-1, 256, c // 16)

    sim = -torch.cdist(windows(pg), windows(pt), p=1)
    group = torch.arange(256) % 16
    eye = torch.eye(256, dtype=torch.bool).expand_as(sim)
    other = (group[:, None] != group[None, :]).expand_as(sim)
    logits = torch.cat([sim[eye].reshape(-1, 1), sim[other].reshape(-1, 240)], dim=1) / 0.07
    ce = torch.nn.functional.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long), reduction="sum")
    assert num(loss.contrast(g, ft)) == pytest.approx(float(ce) / (b * h * w), rel=1e-10)


def test_afdcd_cut_to_whole_windows():
    """Positions past the last whole window (after pooling) do not enter the contrastive term."""
    torch.manual_seed(3)
    loss = AfDCDLoss(4, 4, groups=2, pool=2, patch=2).double()
    g, ft = torch.randn(1, 4, 10, 11, dtype=DT), torch.randn(1, 4, 10, 11, dtype=DT)
    base = loss.contrast(g, ft)
    g2, ft2 = g.clone(), ft.clone()
    g2[:, :, 8:], ft2[:, :, :, 8:] = 5.0, -3.0  # pooled rows/cols 4 and 5: outside the 2 x 2 windows
    assert num(loss.contrast(g2, ft2)) == pytest.approx(num(base), rel=1e-12)
    with pytest.raises(UserError):
        loss.contrast(torch.randn(1, 4, 3, 8, dtype=DT), torch.randn(1, 4, 3, 8, dtype=DT))


# ----------------------------------------------------------------------------- chunking and memory


def test_afdcd_chunked_equals_direct():
    """Chunked (checkpointed) and direct contrast: equal values and equal gradients for the student's
    feature and the loss's own modules."""
    torch.manual_seed(4)
    base_s, ft = torch.randn(2, 3, 12, 16, dtype=DT), torch.randn(2, 8, 12, 16, dtype=DT)
    mask = (torch.rand(2, 1, 12, 16) > 0.4).to(DT)
    results = []
    for chunk in (None, 1, 5):
        torch.manual_seed(9)
        loss = AfDCDLoss(3, 8, groups=4, pool=2, patch=2, windows_per_chunk=chunk).double()
        fs = base_s.clone().requires_grad_()
        value = loss(fs, ft, mask=mask)["afdcd_ctr"]
        value.backward()
        results.append((value.detach(), fs.grad, [p.grad for p in loss.parameters()]))
    v0, g0, p0 = results[0]
    assert g0.abs().sum() > 0
    for v, g, p in results[1:]:
        assert num(v) == pytest.approx(num(v0), rel=1e-12)
        torch.testing.assert_close(g, g0, rtol=1e-10, atol=1e-14)
        for a, b in zip(p, p0):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)


def _saved_bytes(fn) -> int:
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def test_afdcd_chunking_keeps_no_window_matrices():
    """With chunks under checkpointing the graph keeps the maps, not the windows' 256 x 256 matrices
    (at 64 x 64 positions: 2 x 16 windows x 256^2 x 4 bytes = 8 MiB per matrix)."""
    g = torch.randn(2, 32, 64, 64, requires_grad=True)
    ft = torch.randn(2, 32, 64, 64)
    matrix_bytes = 2 * 16 * 256 * 256 * 4
    direct = _saved_bytes(lambda: AfDCDLoss(32, 32, windows_per_chunk=None).contrast(g, ft))
    chunked = _saved_bytes(lambda: AfDCDLoss(32, 32, windows_per_chunk=4).contrast(g, ft))
    assert direct > 2 * matrix_bytes
    assert chunked < matrix_bytes / 2
    assert chunked < 3 * g.numel() * g.element_size()


# ----------------------------------------------------------------------------- masks, modules, gradients


def test_afdcd_masks():
    """``mask="center"`` zeroes the block [h//3 : 2h//3, w//3 : 2w//3] (the release's rand_mask=False);
    the default random mask is the global-RNG draw shared with MGD (reseeding reproduces it)."""
    keep = center_keep_mask(2, 9, 7, torch.device("cpu"), DT)
    for y in range(9):
        for z in range(7):
            expected = 0.0 if (3 <= y < 6 and 2 <= z < 4) else 1.0
            assert float(keep[1, 0, y, z]) == expected
    torch.manual_seed(5)
    loss = AfDCDLoss(3, 4, groups=2, pool=2, patch=2, mask="center").double()
    fs, ft = torch.randn(2, 3, 9, 7, dtype=DT), torch.randn(2, 4, 9, 7, dtype=DT)
    a, b = loss(fs, ft), loss(fs, ft, mask=keep)
    assert num(a["afdcd_fd"]) == num(b["afdcd_fd"]) and num(a["afdcd_ctr"]) == num(b["afdcd_ctr"])
    loss.mask_kind = "random"
    torch.manual_seed(6)
    first = loss(fs, ft)
    torch.manual_seed(6)
    mask = torch.where(torch.rand(2, 1, 9, 7) > 0.25, 0.0, 1.0).to(DT)
    second = loss(fs, ft, mask=mask)
    assert num(first["afdcd_fd"]) == pytest.approx(num(second["afdcd_fd"]), rel=1e-12)


def test_afdcd_modules():
    """1x1 align conv (with bias) only when the widths differ (the release would fail without one); plain
    projector 3x3 conv, ReLU, 3x3 conv; enhanced projector four 3x3 convs; all train with the student."""
    loss = AfDCDLoss(3, 16)
    assert isinstance(loss.align, nn.Conv2d) and loss.align.kernel_size == (1, 1) and loss.align.bias is not None
    first, act, second = loss.projector
    assert isinstance(act, nn.ReLU) and first.kernel_size == second.kernel_size == (3, 3)
    assert AfDCDLoss(16, 16).align is None
    enhanced = AfDCDLoss(16, 16, enhanced_projector=True).projector
    assert isinstance(enhanced, EnhancedProjector)
    assert all(m.kernel_size == (3, 3) for m in enhanced.modules() if isinstance(m, nn.Conv2d))
    assert {id(p) for p in loss.student_parameters()} == {id(p) for p in loss.parameters()}
    assert loss.taps == ("feat",) and loss.terms == ("afdcd_fd", "afdcd_ctr")


@pytest.mark.parametrize("enhanced", [False, True])
def test_afdcd_gradients_reach_student_and_modules_never_teacher(enhanced):
    torch.manual_seed(7)
    loss = AfDCDLoss(3, 4, groups=2, pool=2, patch=2, enhanced_projector=enhanced).double()
    for term in ("afdcd_fd", "afdcd_ctr"):
        loss.zero_grad()
        fs = torch.randn(2, 3, 8, 8, dtype=DT, requires_grad=True)
        ft = torch.randn(2, 4, 8, 8, dtype=DT, requires_grad=True)
        loss(fs, ft, mask=torch.ones(2, 1, 8, 8, dtype=DT))[term].backward()
        assert fs.grad is not None and fs.grad.abs().sum() > 0 and torch.isfinite(fs.grad).all(), term
        assert ft.grad is None, term
        for name, p in loss.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, (term, name)


def test_afdcd_clip_grad_norm():
    """The release clips the loss's own parameters' gradient norm to 15 before each step."""
    torch.manual_seed(8)
    loss = AfDCDLoss(3, 4, groups=2, pool=2, patch=2)
    (1e6 * sum(loss(torch.randn(2, 3, 8, 8), torch.randn(2, 4, 8, 8)).values())).backward()
    before = float(loss.clip_grad_norm_())
    after = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in loss.parameters()))
    assert before > 15 and after == pytest.approx(15.0, rel=1e-4)
    assert AfDCDLoss(3, 4, groups=2, max_grad_norm=None).clip_grad_norm_() is None


def test_afdcd_float32_for_low_precision_inputs():
    loss = AfDCDLoss(3, 4, groups=2, pool=2, patch=2)
    out = loss(torch.randn(1, 3, 8, 8).bfloat16(), torch.randn(1, 4, 8, 8).bfloat16())
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in out.values())


def test_afdcd_bad_settings():
    for kwargs in ({"groups": 3}, {"mask": "box"}, {"mask_ratio": 1.0}, {"tau": 0.0}, {"windows_per_chunk": 0}):
        with pytest.raises(UserError):
            AfDCDLoss(3, 4, **kwargs)
    loss = AfDCDLoss(3, 4, groups=2, pool=2, patch=2)
    with pytest.raises(UserError):
        loss(torch.randn(1, 3, 8, 8), torch.randn(1, 4, 8, 9))
    with pytest.raises(UserError):
        loss(torch.randn(1, 3, 8, 8), torch.randn(1, 4, 8, 8), mask=torch.ones(1, 1, 4, 4))
