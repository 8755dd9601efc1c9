"""BPKD (boundary-privileged KD) against independent formulas written as loops in float64.

The formulation (src/segdistill/distill/bpkd.py, /work/evidence/i16_bpkd_maskd.md): per-class edges
``dilate_c - erode_c`` of the labels with a ``k x k`` square at label resolution, adaptive-average-pooled to the
logits' grid (``M``); edge term = per class and image, the ``M``-weighted sum of the pixel KL of the
``M``-masked logits over the number of positions where ``M > 0``, times ``alpha``, summed over classes, averaged
over images; body term = channel-wise KL of the ``(1 - M)``-masked logits, ``T^2 / (B K)``. Every reference
below walks pixels, windows, classes and images one at a time.
"""

from __future__ import annotations

import math

import pytest
import torch

from segdistill import UserError
from segdistill.distill.bpkd import BPKDLoss, class_edges, edge_masks

DT = torch.float64
IGNORE = 255


def num(x: torch.Tensor | float) -> float:
    return float(x.detach()) if isinstance(x, torch.Tensor) else float(x)


def rel(expected: float, tol: float = 1e-9):
    return pytest.approx(num(expected), rel=tol, abs=tol * 1e-3)


def make_labels(b: int, h: int, w: int, k: int, seed: int) -> torch.Tensor:
    """Blocky labels (so that there are bodies and edges) in ``[0, k-1)`` with ~15% ignored pixels."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, k - 1, (b, (h + 2) // 3, (w + 2) // 3), generator=g)
    labels = coarse.repeat_interleave(3, dim=1).repeat_interleave(3, dim=2)[:, :h, :w].clone()
    labels[torch.rand(b, h, w, generator=g) < 0.15] = IGNORE
    return labels


def loop_edges(labels: torch.Tensor, k: int, size: int) -> torch.Tensor:
    """``edge[b, c, y, x] = 1`` iff pixel (y, x) is valid, class c occurs in its size x size window (inside the
    image) and not every pixel of that window is c."""
    b, h, w = labels.shape
    r = size // 2
    out = torch.zeros(b, k, h, w, dtype=DT)
    for n in range(b):
        for y in range(h):
            for x in range(w):
                if not 0 <= int(labels[n, y, x]) < k:
                    continue
                window = [
                    int(labels[n, yy, xx])
                    for yy in range(max(0, y - r), min(h, y + r + 1))
                    for xx in range(max(0, x - r), min(w, x + r + 1))
                ]
                for c in range(k):
                    if c in window and any(v != c for v in window):
                        out[n, c, y, x] = 1.0
    return out


def loop_adaptive_avg(x: torch.Tensor, oh: int, ow: int) -> torch.Tensor:
    """Adaptive average pooling: output cell (i, j) averages rows floor(i H / oh) .. ceil((i+1) H / oh) - 1 and
    the same for columns."""
    b, k, h, w = x.shape
    out = torch.zeros(b, k, oh, ow, dtype=DT)
    for i in range(oh):
        y0, y1 = (i * h) // oh, -(-((i + 1) * h) // oh)
        for j in range(ow):
            x0, x1 = (j * w) // ow, -(-((j + 1) * w) // ow)
            for n in range(b):
                for c in range(k):
                    total = sum(float(x[n, c, yy, xx]) for yy in range(y0, y1) for xx in range(x0, x1))
                    out[n, c, i, j] = total / ((y1 - y0) * (x1 - x0))
    return out


def softmax(v: list[float]) -> list[float]:
    top = max(v)
    e = [math.exp(a - top) for a in v]
    z = sum(e)
    return [a / z for a in e]


def kl_lists(p_logits: list[float], q_logits: list[float]) -> float:
    """``KL(softmax(p) || softmax(q))`` of two plain lists."""
    p, q = softmax(p_logits), softmax(q_logits)
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q) if pi > 0)


def ref_bpkd(s, t, labels, k, size, t_edge, t_body, alpha, mask_logits):
    """(edge, body) of the module docstring, by loops."""
    b, _, h, w = s.shape
    m = loop_edges(labels, k, size)
    if tuple(m.shape[-2:]) != (h, w):
        m = loop_adaptive_avg(m, h, w)
    pos = [(y, x) for y in range(h) for x in range(w)]
    edge = 0.0
    for n in range(b):
        phi = {}
        for y, x in pos:
            zs = [float(s[n, c, y, x]) * (float(m[n, c, y, x]) if mask_logits else 1.0) for c in range(k)]
            zt = [float(t[n, c, y, x]) * (float(m[n, c, y, x]) if mask_logits else 1.0) for c in range(k)]
            phi[y, x] = t_edge**2 * kl_lists([v / t_edge for v in zt], [v / t_edge for v in zs])
        for c in range(k):
            count = sum(1 for y, x in pos if float(m[n, c, y, x]) > 0)
            if count > 0:
                edge += alpha * sum(phi[y, x] * float(m[n, c, y, x]) for y, x in pos) / count
    edge /= b
    body = 0.0
    for n in range(b):
        for c in range(k):
            zs = [float(s[n, c, y, x]) * (1.0 - float(m[n, c, y, x])) / t_body for y, x in pos]
            zt = [float(t[n, c, y, x]) * (1.0 - float(m[n, c, y, x])) / t_body for y, x in pos]
            body += kl_lists(zt, zs)
    body *= t_body**2 / (b * k)
    return edge, body


# ----------------------------------------------------------------------------- boundary extraction


HAND = torch.tensor(
    [
        [0, 0, 0, 1, 1, 1],
        [0, 0, 0, 1, 1, 1],
        [0, 0, 0, 1, 1, 1],
        [2, 2, 2, 2, 2, 2],
        [2, 2, IGNORE, 2, 2, 2],
    ]
)


def test_edges_of_a_hand_made_map():
    """3x3 square: class 0's edge is the band of pixels within one pixel of its boundary on both sides (its
    top-left 2x2 corner is eroded: its whole window is class 0); the image border is no boundary; the ignored
    pixel is never an edge but breaks class 2's erosion around it."""
    e = class_edges(HAND[None], 3, kernel_size=3)[0].int()
    expected = torch.tensor(
        [
            [[0, 0, 1, 1, 0, 0], [0, 0, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0], [0, 0, 0, 0, 0, 0]],
            [[0, 0, 1, 1, 0, 0], [0, 0, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0]],
            [[0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1], [0, 1, 0, 1, 0, 0]],
        ]
    )
    assert torch.equal(e, expected)
    assert not class_edges(HAND[None], 3, kernel_size=1).any(), "a 1x1 element erodes nothing: no edge"
    assert not class_edges(torch.full((1, 4, 4), IGNORE), 3, kernel_size=3).any()


@pytest.mark.parametrize("size", [3, 5])
def test_edges_match_loops(size):
    labels = make_labels(2, 9, 11, 4, seed=size)
    labels[0, 2, 3] = 7  # out of range: treated as ignored
    assert torch.equal(class_edges(labels, 4, kernel_size=size).double(), loop_edges(labels, 4, size))


def test_edge_masks_pool_to_the_logits_grid():
    """Non-divisible sizes (9 x 11 labels -> 4 x 5 logits) use adaptive average pooling; at the label size the
    binary edges are returned as they are."""
    labels = make_labels(2, 9, 11, 4, seed=3)
    got = edge_masks(labels, 4, (4, 5), kernel_size=3).double()
    assert torch.allclose(got, loop_adaptive_avg(loop_edges(labels, 4, 3), 4, 5), rtol=0, atol=1e-6)
    assert torch.equal(edge_masks(labels, 4, (9, 11), kernel_size=3), class_edges(labels, 4, kernel_size=3))


# ----------------------------------------------------------------------------- the terms


@pytest.mark.parametrize(
    "shape, label_size, mask_logits, t_edge, t_body, alpha",
    [
        ((2, 4, 4, 5), (9, 11), True, 1.0, 1.0, 2.0),
        ((2, 4, 4, 5), (9, 11), False, 2.5, 4.0, 1.0),
        ((1, 3, 6, 7), (6, 7), True, 1.5, 2.0, 2.0),  # labels at the logits' grid: binary masks
    ],
)
def test_terms_match_formula(shape, label_size, mask_logits, t_edge, t_body, alpha):
    b, k, h, w = shape
    g = torch.Generator().manual_seed(h * 10 + w)
    s = torch.randn(shape, generator=g, dtype=DT) * 2
    t = torch.randn(shape, generator=g, dtype=DT) * 2
    labels = make_labels(b, *label_size, k, seed=b + k)
    loss = BPKDLoss(
        k, kernel_size=3, edge_temperature=t_edge, body_temperature=t_body, edge_alpha=alpha, mask_logits=mask_logits
    )
    got = loss(s, t, labels)
    assert got["bpkd_edge"].dtype == DT
    edge, body = ref_bpkd(s, t, labels, k, 3, t_edge, t_body, alpha, mask_logits)
    assert edge > 0 and body > 0
    assert num(got["bpkd_edge"]) == rel(edge)
    assert num(got["bpkd_body"]) == rel(body)


def test_no_labelled_pixel_leaves_only_the_body_term():
    """All pixels ignored: no edge anywhere, so the edge term is 0 and the body term is plain CWD."""
    s, t = torch.randn(2, 3, 4, 4, dtype=DT), torch.randn(2, 3, 4, 4, dtype=DT)
    got = BPKDLoss(3, kernel_size=3)(s, t, torch.full((2, 8, 8), IGNORE))
    assert num(got["bpkd_edge"]) == 0.0
    _, body = ref_bpkd(s, t, torch.full((2, 8, 8), IGNORE), 3, 3, 1.0, 1.0, 2.0, True)
    assert num(got["bpkd_body"]) == rel(body)


def test_gradients_reach_the_student_only():
    s = torch.randn(2, 4, 5, 6, dtype=DT, requires_grad=True)
    t = torch.randn(2, 4, 5, 6, dtype=DT, requires_grad=True)
    terms = BPKDLoss(4, kernel_size=3)(s, t, make_labels(2, 10, 12, 4, seed=1))
    (terms["bpkd_edge"] + terms["bpkd_body"]).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and torch.isfinite(s.grad).all()
    assert t.grad is None
    assert not list(BPKDLoss(4).parameters()), "BPKD owns no module"


def test_bad_settings_and_inputs():
    with pytest.raises(UserError, match="odd"):
        BPKDLoss(4, kernel_size=4)
    with pytest.raises(UserError, match="temperatures"):
        BPKDLoss(4, edge_temperature=0.0)
    with pytest.raises(UserError, match="4 classes"):
        BPKDLoss(4)(torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4), torch.zeros(1, 8, 8, dtype=torch.long))
    with pytest.raises(UserError, match="differ"):
        BPKDLoss(4)(torch.randn(1, 4, 4, 4), torch.randn(1, 4, 5, 4), torch.zeros(1, 8, 8, dtype=torch.long))
