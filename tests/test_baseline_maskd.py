"""MasKD (masked distillation with receptive tokens) against independent formulas written as loops in float64.

The reference (hunto/MasKD ``segmentation/losses/maskd.py``, ``train_mask_module.py``, ``train_maskd.py``):
masks ``sigmoid(T_n . f)``; stage 1 = cross-entropy of ``f * sum_n m_n`` (through the teacher's classifier when
``f`` is a feature) upsampled with align_corners=True, plus the mean off-diagonal Dice coefficient of the masks;
stage 2 = ``0.5 * mean_{b,n,c} sum_p m^2 (s - t)^2 / (sum_p m + 1e-5)``, main logits + 0.4 x auxiliary logits.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from segdistill import UserError
from segdistill.distill.maskd import MasKDLoss, ReceptiveTokens, dice_diversity, mask_learning_loss

DT = torch.float64
IGNORE = 255


def num(x: torch.Tensor | float) -> float:
    return float(x.detach()) if isinstance(x, torch.Tensor) else float(x)


def rel(expected: float, tol: float = 1e-9):
    return pytest.approx(num(expected), rel=tol, abs=tol * 1e-3)


def loop_masks(tokens: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """``m[b, n, y, x] = 1 / (1 + exp(-sum_c T[n, c] f[b, c, y, x]))``."""
    b, c, h, w = f.shape
    out = torch.zeros(b, tokens.shape[0], h, w, dtype=DT)
    for i in range(b):
        for n in range(tokens.shape[0]):
            for y in range(h):
                for x in range(w):
                    a = sum(float(tokens[n, ch]) * float(f[i, ch, y, x]) for ch in range(c))
                    out[i, n, y, x] = 1.0 / (1.0 + math.exp(-a))
    return out


def loop_dice(m: torch.Tensor) -> float:
    """Mean over images and ordered pairs i != j of 2 <m_i, m_j> / (|m_i|^2 + |m_j|^2 + 2e-12)."""
    b, n = m.shape[:2]
    total = 0.0
    for i in range(b):
        vecs = [[float(v) for v in m[i, k].flatten()] for k in range(n)]
        for p in range(n):
            for q in range(n):
                if p != q:
                    dot = sum(a * c for a, c in zip(vecs[p], vecs[q]))
                    sq = sum(a * a for a in vecs[p]) + sum(c * c for c in vecs[q]) + 2e-12
                    total += 2 * dot / sq
    return total / (b * n * (n - 1))


def bilinear_align_corners(x: torch.Tensor, big_h: int, big_w: int) -> torch.Tensor:
    """``B x K x h x w`` -> ``B x K x H x W``, bilinear with align_corners=True, pixel by pixel."""
    b, k, h, w = x.shape
    out = torch.zeros(b, k, big_h, big_w, dtype=DT)
    for yy in range(big_h):
        sy = yy * (h - 1) / (big_h - 1) if big_h > 1 else 0.0
        y0 = min(int(math.floor(sy)), h - 1)
        y1, dy = min(y0 + 1, h - 1), sy - y0
        for xx in range(big_w):
            sx = xx * (w - 1) / (big_w - 1) if big_w > 1 else 0.0
            x0 = min(int(math.floor(sx)), w - 1)
            x1, dx = min(x0 + 1, w - 1), sx - x0
            out[:, :, yy, xx] = (
                (1 - dy) * (1 - dx) * x[:, :, y0, x0]
                + (1 - dy) * dx * x[:, :, y0, x1]
                + dy * (1 - dx) * x[:, :, y1, x0]
                + dy * dx * x[:, :, y1, x1]
            )
    return out


def loop_stage1(tokens, f, labels, conv: nn.Conv2d | None) -> tuple[float, float]:
    """(task CE, Dice) of stage 1, by loops: masked map, 1x1 classifier, upsampling, CE over valid pixels."""
    m = loop_masks(tokens, f)
    b, c, h, w = f.shape
    masked = torch.zeros_like(f)
    for i in range(b):
        for y in range(h):
            for x in range(w):
                total = sum(float(m[i, n, y, x]) for n in range(m.shape[1]))
                for ch in range(c):
                    masked[i, ch, y, x] = f[i, ch, y, x] * total
    logits = masked
    if conv is not None:
        weight, bias = conv.weight.detach()[:, :, 0, 0], conv.bias.detach()
        logits = torch.zeros(b, weight.shape[0], h, w, dtype=DT)
        for i in range(b):
            for y in range(h):
                for x in range(w):
                    for k in range(weight.shape[0]):
                        logits[i, k, y, x] = bias[k] + sum(
                            float(weight[k, ch]) * float(masked[i, ch, y, x]) for ch in range(c)
                        )
    up = bilinear_align_corners(logits, *labels.shape[-2:])
    ce, count = 0.0, 0
    for i in range(b):
        for y in range(labels.shape[1]):
            for x in range(labels.shape[2]):
                target = int(labels[i, y, x])
                if target == IGNORE:
                    continue
                z = [float(v) for v in up[i, :, y, x]]
                top = max(z)
                ce += top + math.log(sum(math.exp(v - top) for v in z)) - z[target]
                count += 1
    return ce / max(count, 1), loop_dice(m)


def loop_masked_mse(s: torch.Tensor, t: torch.Tensor, m: torch.Tensor) -> float:
    """0.5 * mean over (b, n, c) of sum_p (m s - m t)^2 / (sum_p m + 1e-5)."""
    b, c, h, w = s.shape
    n = m.shape[1]
    total = 0.0
    for i in range(b):
        for k in range(n):
            area = sum(float(m[i, k, y, x]) for y in range(h) for x in range(w)) + 1e-5
            for ch in range(c):
                sq = sum(
                    (float(m[i, k, y, x]) * float(s[i, ch, y, x]) - float(m[i, k, y, x]) * float(t[i, ch, y, x])) ** 2
                    for y in range(h)
                    for x in range(w)
                )
                total += sq / area
    return 0.5 * total / (b * n * c)


def make_labels(b: int, h: int, w: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, k, (b, h, w), generator=g)
    labels[torch.rand(b, h, w, generator=g) < 0.2] = IGNORE
    return labels


def trained_tokens(channels: int, num_tokens: int, seed: int) -> ReceptiveTokens:
    torch.manual_seed(seed)
    tokens = ReceptiveTokens(channels, num_tokens).double()
    with torch.no_grad():
        tokens.mask_token.normal_(0, 0.5)  # away from the N(0, 0.01) start, so that masks differ
    return tokens


# ----------------------------------------------------------------------------- masks and stage 1


def test_masks_and_dice_match_loops():
    tokens = trained_tokens(5, 3, seed=0)
    f = torch.randn(2, 5, 3, 4, dtype=DT)
    m = tokens(f).detach()
    assert m.shape == (2, 3, 3, 4) and m.dtype == DT
    assert torch.allclose(m, loop_masks(tokens.mask_token.detach(), f), rtol=1e-12, atol=1e-12)
    assert num(dice_diversity(m)) == rel(loop_dice(m))
    assert num(dice_diversity(m[:, :1])) == 0.0


def test_default_tokens_follow_the_release():
    tokens = ReceptiveTokens(19)
    assert tuple(tokens.mask_token.shape) == (8, 19)
    assert 0.003 < float(tokens.mask_token.detach().std()) < 0.02, "initialised N(0, 0.01^2)"
    assert list(tokens.state_dict()) == ["mask_token"], "loads the release's mask-module checkpoints"


@pytest.mark.parametrize("with_classifier", [False, True])
def test_stage1_loss_matches_formula(with_classifier):
    """On logits (the release: no classifier) and on a feature through a 1x1 classifier; labels at a larger
    size (bilinear align_corners upsampling) with ignored pixels."""
    channels = 6 if with_classifier else 4
    tokens = trained_tokens(channels, 3, seed=1)
    f = torch.randn(2, channels, 3, 4, dtype=DT)
    labels = make_labels(2, 5, 7, 4, seed=2)
    conv = nn.Conv2d(channels, 4, 1).double() if with_classifier else None
    got = mask_learning_loss(tokens, f, labels, classifier=conv)
    ce, dice = loop_stage1(tokens.mask_token.detach(), f, labels, conv)
    assert num(got["maskd_task"]) == rel(ce)
    assert num(got["maskd_dice"]) == rel(dice)


def test_stage1_trains_the_tokens_and_nothing_else():
    """A few SGD steps on a tiny fixed problem lower task + Dice; the gradient reaches the tokens, never the
    teacher's map or its frozen classifier."""
    torch.manual_seed(0)
    feat = torch.randn(2, 6, 5, 5, requires_grad=True)
    classifier = nn.Conv2d(6, 3, 1).requires_grad_(False)
    labels = classifier(feat.detach()).argmax(dim=1).repeat_interleave(2, 1).repeat_interleave(2, 2)
    labels[:, 0] = IGNORE
    tokens = ReceptiveTokens(6, 4)
    start = tokens.mask_token.detach().clone()
    optimizer = torch.optim.SGD(tokens.parameters(), lr=0.5, momentum=0.9)
    values = []
    for _ in range(30):
        terms = mask_learning_loss(tokens, feat, labels, classifier)
        total = terms["maskd_task"] + terms["maskd_dice"]
        values.append(float(total.detach()))
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    assert values[-1] < 0.8 * values[0], values
    assert not torch.equal(tokens.mask_token.detach(), start)
    assert feat.grad is None
    assert all(p.grad is None for p in classifier.parameters())


# ----------------------------------------------------------------------------- stage 2


def test_stage2_matches_formula_main_and_aux():
    """``maskd = L(main logits) + 0.4 L(aux logits)``, masks from the teacher's map of each pair."""
    tokens = trained_tokens(4, 3, seed=3)
    loss = MasKDLoss(4, 3, tokens=tokens).double()
    assert loss.taps == ("logits", "aux_logits")
    s, t = torch.randn(2, 4, 3, 4, dtype=DT), torch.randn(2, 4, 3, 4, dtype=DT)
    sa, ta = torch.randn(2, 4, 3, 4, dtype=DT), torch.randn(2, 4, 3, 4, dtype=DT)
    token_values = loss.tokens.mask_token.detach()  # the copied values (stored in float32, then .double())
    main = loop_masked_mse(s, t, loop_masks(token_values, t))
    aux = loop_masked_mse(sa, ta, loop_masks(token_values, ta))
    got = loss.forward_taps({"logits": s, "aux_logits": sa}, {"logits": t, "aux_logits": ta}, None)
    assert num(got["maskd"]) == rel(main + 0.4 * aux)
    assert num(loss(s, t)["maskd"]) == rel(main)
    assert MasKDLoss(4, 3, aux_weight=0.0).taps == ("logits",)


def test_stage2_on_features_with_an_aligning_conv():
    """``tap="feat"`` with different widths: the student's map goes through the loss's 1x1 conv first."""
    tokens = trained_tokens(5, 2, seed=4)
    loss = MasKDLoss(5, 2, tokens=tokens, tap="feat", aux_weight=0.0, student_channels=3).double()
    s, t = torch.randn(2, 3, 3, 3, dtype=DT), torch.randn(2, 5, 3, 3, dtype=DT)
    weight = loss.align.weight.detach()[:, :, 0, 0]
    aligned = torch.zeros(2, 5, 3, 3, dtype=DT)
    for i in range(2):
        for y in range(3):
            for x in range(3):
                for k in range(5):
                    aligned[i, k, y, x] = sum(float(weight[k, c]) * float(s[i, c, y, x]) for c in range(3))
    expected = loop_masked_mse(aligned, t, loop_masks(loss.tokens.mask_token.detach(), t))
    assert num(loss.forward_taps({"feat": s}, {"feat": t}, None)["maskd"]) == rel(expected)


def test_stage2_trains_the_student_and_leaves_the_tokens_frozen():
    tokens = trained_tokens(4, 3, seed=5)
    loss = MasKDLoss(4, 3, tokens=tokens, tap="feat", aux_weight=0.0, student_channels=2).double()
    frozen = loss.tokens.mask_token.detach().clone()
    assert all(p is not loss.tokens.mask_token for p in loss.student_parameters())
    assert {id(p) for p in loss.student_parameters()} == {id(loss.align.weight)}
    s = torch.randn(2, 2, 4, 4, dtype=DT, requires_grad=True)
    t = torch.randn(2, 4, 4, 4, dtype=DT, requires_grad=True)
    optimizer = torch.optim.SGD(loss.student_parameters(), lr=0.1)
    loss(s, t)["maskd"].backward()
    optimizer.step()
    assert s.grad is not None and s.grad.abs().sum() > 0 and torch.isfinite(s.grad).all()
    assert loss.align.weight.grad is not None and loss.align.weight.grad.abs().sum() > 0
    assert t.grad is None
    assert loss.tokens.mask_token.grad is None
    assert torch.equal(loss.tokens.mask_token.detach(), frozen)
    assert "tokens.mask_token" in loss.state_dict(), "the tokens are saved and resumed with the loss"


def test_loading_tokens():
    trained = trained_tokens(4, 3, seed=6).float()
    from_module = MasKDLoss(4, 3, tokens=trained)
    from_state = MasKDLoss(4, 3)
    from_state.load_tokens({"mask_token": trained.mask_token.detach().clone()})
    assert torch.equal(from_module.tokens.mask_token, trained.mask_token)
    assert torch.equal(from_state.tokens.mask_token, trained.mask_token)
    assert not from_state.tokens.mask_token.requires_grad
    with pytest.raises(UserError, match="tokens"):
        from_state.load_tokens({"mask_token": torch.zeros(2, 4)})


def test_bad_settings():
    with pytest.raises(UserError, match="tap"):
        MasKDLoss(4, tap="stage3")
    with pytest.raises(UserError, match="auxiliary"):
        MasKDLoss(4, tap="feat")
    with pytest.raises(UserError, match="same classes"):
        MasKDLoss(4, student_channels=3)
    with pytest.raises(UserError, match="channels"):
        ReceptiveTokens(4)(torch.randn(1, 3, 2, 2))
