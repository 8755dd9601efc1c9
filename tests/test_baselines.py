"""The baseline distillation losses (KD, FitNets, AT, SKD, IFVD, CWD, DIST, CIRKD) against independent
formulas written here from /work/shared/METHODS.md ("Detailed specification", sections 2 to 9).

Every reference below is computed the naive way (Python loops over images, classes, pixels or pairs;
torch only on scalars and vectors) and never calls the implementation's helpers. Parity is checked in
float64 on small random tensors, with labels that contain ignored (255) pixels and absent classes.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from segdistill import Distiller, UserError, build_segmentor
from segdistill.distill import (
    AdversarialLoss,
    ATLoss,
    CIRKDMemoryLoss,
    CIRKDMiniBatchLoss,
    CWDLoss,
    DISTLoss,
    FitNetLoss,
    IFVDLoss,
    KDLoss,
    PairwiseLoss,
    probe_channels,
)
from segdistill.distill.methods import MethodContext, build_methods
from segdistill.engine.task import train_step

DT = torch.float64
IGNORE = 255


# ----------------------------------------------------------------------------- naive helpers


def num(x: torch.Tensor | float) -> float:
    return float(x.detach()) if isinstance(x, torch.Tensor) else float(x)


def rel(expected: torch.Tensor | float, tol: float):
    return pytest.approx(num(expected), rel=tol, abs=tol * 1e-3)


def make_labels(b: int, h: int, w: int, k: int, seed: int = 0) -> torch.Tensor:
    """``b x h x w`` labels in ``[0, k-1)`` (class ``k-1`` absent everywhere), first row and ~20% of
    the rest ignored (255)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, k - 1, (b, h, w), generator=g)
    labels[torch.rand(b, h, w, generator=g) < 0.2] = IGNORE
    labels[:, 0, :] = IGNORE
    return labels


def nearest(target: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Nearest-neighbour downsampling as torch's ``mode='nearest'``: source index ``floor(dst * in / out)``."""
    b, big_h, big_w = target.shape
    out = torch.empty(b, h, w, dtype=torch.long)
    for y in range(h):
        for x in range(w):
            out[:, y, x] = target[:, (y * big_h) // h, (x * big_w) // w]
    return out


def bilinear_align_corners(x: torch.Tensor, big_h: int, big_w: int) -> torch.Tensor:
    """``B x K x h x w`` -> ``B x K x H x W``, bilinear with ``align_corners=True``, pixel by pixel."""
    b, k, h, w = x.shape
    out = x.new_zeros(b, k, big_h, big_w)
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


def pool_windows(x: torch.Tensor, size: int, reduce) -> torch.Tensor:
    """``size x size`` windows with stride ``size``, ceil mode: partial windows at the border keep only
    the positions that exist; ``reduce`` maps a ``B x C x n`` block to ``B x C``."""
    b, c, h, w = x.shape
    oh, ow = -(-h // size), -(-w // size)
    out = x.new_zeros(b, c, oh, ow)
    for i in range(oh):
        for j in range(ow):
            block = x[:, :, i * size : min((i + 1) * size, h), j * size : min((j + 1) * size, w)]
            out[:, :, i, j] = reduce(block.reshape(b, c, -1))
    return out


def max_pool_ceil(x, size):
    return pool_windows(x, size, lambda v: v.max(dim=2).values)


def avg_pool_ceil(x, size):
    return pool_windows(x, size, lambda v: v.mean(dim=2))


def kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """``KL(softmax(p) || softmax(q))`` of two vectors."""
    p = torch.softmax(p_logits, 0)
    return (p * (torch.log(p) - torch.log_softmax(q_logits, 0))).sum()


def unit(v: torch.Tensor) -> torch.Tensor:
    """L2 normalisation with the spec's eps: ``v / max(|v|, 1e-12)`` (a zero vector stays zero)."""
    return v / max(float(v.norm()), 1e-12)


def pixels(h: int, w: int):
    return [(y, x) for y in range(h) for x in range(w)]


def assert_student_only(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> None:
    for s in student:
        assert s.grad is not None and s.grad.abs().sum() > 0, "no gradient reached the student input"
        assert torch.isfinite(s.grad).all()
    for t in teacher:
        assert t.grad is None or not t.grad.any(), "a gradient reached the teacher input"


# ----------------------------------------------------------------------------- KD (section 2)


def ref_kd(s, t, temperature, reduction, size=None):
    """``T^2 KL(sm(t/T) || sm(s/T))`` per pixel, after bilinear (align_corners) upsampling to ``size``;
    'pixel' = mean over pixels, 'mean' = sum over all elements / (B K H W)."""
    if size is not None:
        s, t = bilinear_align_corners(s, *size), bilinear_align_corners(t, *size)
    b, k, h, w = s.shape
    total = 0.0
    for i in range(b):
        for y, x in pixels(h, w):
            total = total + temperature**2 * kl(t[i, :, y, x] / temperature, s[i, :, y, x] / temperature)
    per_pixel = total / (b * h * w)
    return per_pixel if reduction == "pixel" else per_pixel / k


@pytest.mark.parametrize("reduction", ["mean", "pixel"])
@pytest.mark.parametrize("temperature", [1.0, 2.5])
@pytest.mark.parametrize("upsample", [True, False])
def test_kd_matches_formula(reduction, temperature, upsample):
    """KD = T^2 KL(teacher || student) per pixel at the label size (align_corners=True), reduced over
    B*K*H*W ('mean') or B*H*W ('pixel'); with upsample=False at the logits' own grid."""
    torch.manual_seed(1)
    s, t = torch.randn(2, 4, 3, 4, dtype=DT) * 2, torch.randn(2, 4, 3, 4, dtype=DT) * 2
    target = make_labels(2, 7, 9, 4)
    got = KDLoss(temperature, reduction, upsample=upsample)(s, t, target)["kd"]
    expected = ref_kd(s, t, temperature, reduction, (7, 9) if upsample else None)
    assert num(got) == rel(expected, 1e-9)


def test_kd_keeps_float64():
    """Like every other loss, KD should keep float64 inputs in float64 (common.float32's convention)."""
    s, t = torch.randn(2, 4, 3, 3, dtype=DT), torch.randn(2, 4, 3, 3, dtype=DT)
    assert KDLoss(1.0)(s, t, torch.zeros(2, 3, 3, dtype=torch.long))["kd"].dtype == DT


# ----------------------------------------------------------------------------- FitNets (section 3)


def test_fitnet_matches_formula():
    """FitNets = (1 / (B C_t h w)) sum (r(f_s) - f_t)^2 with r the module's 1x1 conv (no bias)."""
    torch.manual_seed(2)
    loss = FitNetLoss(3, 5).double()
    assert loss.regressor.bias is None
    fs, ft = torch.randn(2, 3, 4, 5, dtype=DT), torch.randn(2, 5, 4, 5, dtype=DT)
    weight = loss.regressor.weight.detach()[:, :, 0, 0].clone()
    total = 0.0
    for b in range(2):
        for y, x in pixels(4, 5):
            total = total + ((weight @ fs[b, :, y, x] - ft[b, :, y, x]) ** 2).sum()
    expected = total / (2 * 5 * 4 * 5)
    assert num(loss(fs, ft)["fitnet"]) == rel(expected, 1e-9)


# ----------------------------------------------------------------------------- AT (section 4)


def ref_attention(f: torch.Tensor, b: int) -> torch.Tensor:
    """``n(vec(1/C sum_c f_c^2))`` of image ``b``."""
    c, h, w = f.shape[1:]
    a = torch.stack([sum(f[b, ch, y, x] ** 2 for ch in range(c)) / c for y, x in pixels(h, w)])
    return unit(a)


def test_at_matches_formula_over_two_taps():
    """AT = sum over taps of (1 / (B hw)) sum (a_s - a_t)^2, a = L2-normalised channel mean of f^2 per
    image; channel counts may differ between the models; forward and forward_taps agree."""
    torch.manual_seed(3)
    s1, t1 = torch.randn(2, 3, 4, 5, dtype=DT), torch.randn(2, 6, 4, 5, dtype=DT)
    s2, t2 = torch.randn(2, 4, 3, 3, dtype=DT), torch.randn(2, 2, 3, 3, dtype=DT)
    expected = 0.0
    for fs, ft in ((s1, t1), (s2, t2)):
        hw = fs.shape[2] * fs.shape[3]
        expected = expected + sum(((ref_attention(fs, b) - ref_attention(ft, b)) ** 2).sum() for b in range(2)) / (
            2 * hw
        )
    loss = ATLoss(("feat", "stage3"))
    assert num(loss(s1, s2, teachers=[t1, t2])["at"]) == rel(expected, 1e-9)
    via_taps = loss.forward_taps({"feat": s1, "stage3": s2}, {"feat": t1, "stage3": t2}, None)["at"]
    assert num(via_taps) == rel(expected, 1e-9)


# ----------------------------------------------------------------------------- SKD pair-wise (section 5)


def ref_pairwise(fs: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
    """(1 / (B N^2)) sum_{b,i,j} (<s_i, s_j> - <t_i, t_j>)^2 over channel-normalised nodes."""
    b, _, h, w = fs.shape
    nodes = pixels(h, w)
    total = 0.0
    for i in range(b):
        s = [unit(fs[i, :, y, x]) for y, x in nodes]
        t = [unit(ft[i, :, y, x]) for y, x in nodes]
        for p in range(len(nodes)):
            for q in range(len(nodes)):
                total = total + (torch.dot(s[p], s[q]) - torch.dot(t[p], t[q])) ** 2
    return total / (b * len(nodes) ** 2)


@pytest.mark.parametrize("pool", [1, 2])
def test_skd_pairwise_matches_formula(pool):
    """SKD pair-wise = mean over B N^2 of squared affinity differences; pool=2 = the same on 2x2 max-pooled
    nodes in ceil mode (an odd 5x7 map gives a 3x4 grid whose last row/column are partial windows)."""
    torch.manual_seed(4)
    fs, ft = torch.randn(2, 3, 5, 7, dtype=DT), torch.randn(2, 6, 5, 7, dtype=DT)
    expected = ref_pairwise(fs, ft) if pool == 1 else ref_pairwise(max_pool_ceil(fs, 2), max_pool_ceil(ft, 2))
    assert num(PairwiseLoss(pool)(fs, ft)["skd_pa"]) == rel(expected, 1e-9)


# ----------------------------------------------------------------------------- IFVD (section 6)


def ref_variation(f: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Per image and present class, cos of each pixel to its class centre (mean of raw features);
    1 where the pixel is ignored."""
    b, _, h, w = f.shape
    out = torch.ones(b, h, w, dtype=f.dtype)
    for i in range(b):
        for c in range(k):
            members = [(y, x) for y, x in pixels(h, w) if int(labels[i, y, x]) == c]
            if not members:
                continue
            centre = sum(f[i, :, y, x] for y, x in members) / len(members)
            for y, x in members:
                out[i, y, x] = torch.dot(f[i, :, y, x], centre) / (f[i, :, y, x].norm() * centre.norm())
    return out


def test_ifvd_matches_formula():
    """IFVD = (1 / (B h w)) sum (s_s - s_t)^2 with per-image class centres from labels nearest-resized to
    h x w; ignored pixels count with similarity 1 on both sides."""
    torch.manual_seed(5)
    k, h, w = 4, 4, 5
    fs, ft = torch.randn(2, 3, h, w, dtype=DT), torch.randn(2, 6, h, w, dtype=DT)
    target = make_labels(2, 2 * h, 2 * w, k)
    labels = nearest(target, h, w)
    assert (labels == IGNORE).any() and not (labels == k - 1).any()
    expected = ((ref_variation(fs, labels, k) - ref_variation(ft, labels, k)) ** 2).sum() / (2 * h * w)
    assert num(IFVDLoss(k)(fs, ft, target)["ifvd"]) == rel(expected, 1e-9)


# ----------------------------------------------------------------------------- CWD (section 7)


def ref_cwd(s: torch.Tensor, t: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 / (B C) sum_{b,c} KL(softmax over space of t/T || of s/T)."""
    b, c = s.shape[:2]
    total = 0.0
    for i in range(b):
        for ch in range(c):
            total = total + kl(t[i, ch].flatten() / temperature, s[i, ch].flatten() / temperature)
    return temperature**2 * total / (b * c)


@pytest.mark.parametrize("temperature", [4.0, 1.0])
def test_cwd_matches_formula(temperature):
    """CWD = T^2/(B K) sum KL of spatial softmaxes per channel; the feature variant applies the module's
    1x1 align conv to the student feature first."""
    torch.manual_seed(6)
    s, t = torch.randn(2, 4, 3, 5, dtype=DT) * 3, torch.randn(2, 4, 3, 5, dtype=DT) * 3
    assert num(CWDLoss(temperature)(s, t)["cwd"]) == rel(ref_cwd(s, t, temperature), 1e-9)
    loss = CWDLoss(temperature, feature_channels=(3, 6)).double()
    fs, ft = torch.randn(2, 3, 3, 5, dtype=DT), torch.randn(2, 6, 3, 5, dtype=DT)
    weight = loss.align.weight.detach()[:, :, 0, 0]
    aligned = torch.zeros(2, 6, 3, 5, dtype=DT)
    for b in range(2):
        for y, x in pixels(3, 5):
            aligned[b, :, y, x] = weight @ fs[b, :, y, x]
    out = loss.forward_taps({"logits": s, "feat": fs}, {"logits": t, "feat": ft}, None)
    assert num(out["cwd"]) == rel(ref_cwd(s, t, temperature), 1e-9)
    assert num(out["cwd_feat"]) == rel(ref_cwd(aligned, ft, temperature), 1e-9)


# ----------------------------------------------------------------------------- DIST (section 8)


def pearson_spec(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """cos(u - mean u, v - mean v), eps 1e-8 added to the denominator (DIST_KD ``cosine_similarity``)."""
    u, v = u - u.mean(), v - v.mean()
    return torch.dot(u, v) / (u.norm() * v.norm() + 1e-8)


def ref_dist(s, t, beta=1.0, gamma=1.0, tau=1.0):
    """tau^2 (beta (1 - mean_pixels rho over classes) + gamma (1 - mean_classes rho over the batch's pixels))."""
    b, k, h, w = s.shape
    rows_s = [torch.softmax(s[i, :, y, x] / tau, 0) for i in range(b) for y, x in pixels(h, w)]
    rows_t = [torch.softmax(t[i, :, y, x] / tau, 0) for i in range(b) for y, x in pixels(h, w)]
    inter = 1 - sum(pearson_spec(p, q) for p, q in zip(rows_s, rows_t)) / len(rows_s)
    cols_s, cols_t = torch.stack(rows_s), torch.stack(rows_t)  # M x K
    intra = 1 - sum(pearson_spec(cols_s[:, c], cols_t[:, c]) for c in range(k)) / k
    return tau**2 * (beta * inter + gamma * intra)


@pytest.mark.parametrize(("beta", "gamma", "tau"), [(1.0, 1.0, 1.0), (2.0, 0.5, 2.0)])
def test_dist_matches_formula(beta, gamma, tau):
    """DIST = beta L_inter + gamma L_intra on class probabilities of all B h w pixels (tau^2 and
    softmax(z / tau) for tau != 1); forward reads main logits only; forward_taps adds aux_weight x aux."""
    torch.manual_seed(7)
    s, t, sa, ta = (torch.randn(2, 4, 3, 4, dtype=DT) * 2 for _ in range(4))
    loss = DISTLoss(beta, gamma, tau, aux_weight=0.4)
    main = ref_dist(s, t, beta, gamma, tau)
    assert num(loss(s, t)["dist"]) == rel(main, 1e-9)
    both = loss.forward_taps({"logits": s, "aux_logits": sa}, {"logits": t, "aux_logits": ta}, None)["dist"]
    assert num(both) == rel(main + 0.4 * ref_dist(sa, ta, beta, gamma, tau), 1e-9)


def test_dist_eps_added_to_denominator_for_nearly_uniform_student():
    """With nearly uniform student probabilities the eps convention of the Pearson denominator matters."""
    torch.manual_seed(8)
    s, t = torch.randn(2, 4, 3, 4, dtype=DT) * 1e-5, torch.randn(2, 4, 3, 4, dtype=DT) * 2
    assert num(DISTLoss(aux_weight=0)(s, t)["dist"]) == rel(ref_dist(s, t), 1e-9)


# ----------------------------------------------------------------------------- CIRKD mini-batch (section 9)


def ref_cirkd_mb(fs: torch.Tensor, ft: torch.Tensor, temperature: float) -> torch.Tensor:
    """(1/B^2) sum_{i,j} (1/hw) sum_rows KL(sm(A^t_ij[r] / tau) || sm(A^s_ij[r] / tau)), A = cosine."""
    b, _, h, w = fs.shape
    s = [[unit(fs[i, :, y, x]) for y, x in pixels(h, w)] for i in range(b)]
    t = [[unit(ft[i, :, y, x]) for y, x in pixels(h, w)] for i in range(b)]
    hw = h * w
    total = 0.0
    for i in range(b):
        for j in range(b):
            sj, tj = torch.stack(s[j]), torch.stack(t[j])  # hw x C: the columns (pixels of image j)
            for r in range(hw):
                total = total + kl(tj @ t[i][r] / temperature, sj @ s[i][r] / temperature) / hw
    return total / (b * b)


@pytest.mark.parametrize("pool", [1, 2])
def test_cirkd_minibatch_matches_formula(pool):
    """CIRKD mini-batch = mean over the B^2 ordered image pairs (i = j included) of the row-averaged KL of
    pixel-to-pixel cosine similarities at tau = 0.1; pool=2 = the same on 2x2 average-pooled features
    (ceil mode: a partial border window averages the positions that exist)."""
    torch.manual_seed(9)
    fs, ft = torch.randn(3, 3, 3, 5, dtype=DT), torch.randn(3, 5, 3, 5, dtype=DT)
    if pool == 1:
        expected = ref_cirkd_mb(fs, ft, 0.1)
    else:
        expected = ref_cirkd_mb(avg_pool_ceil(fs, 2), avg_pool_ceil(ft, 2), 0.1)
    for checkpointed in (True, False):
        got = CIRKDMiniBatchLoss(0.1, pool=pool, checkpointed=checkpointed)(fs.requires_grad_(), ft)["cirkd_mb"]
        assert num(got) == rel(expected, 1e-9)


@pytest.mark.parametrize("pool", [1, 2])
def test_cirkd_minibatch_checkpointing_changes_nothing(pool):
    """Checkpointed and plain mini-batch losses give equal values and equal student gradients."""
    torch.manual_seed(10)
    base_s, ft = torch.randn(2, 4, 5, 6, dtype=DT), torch.randn(2, 6, 5, 6, dtype=DT)
    results = []
    for checkpointed in (True, False):
        fs = base_s.clone().requires_grad_()
        value = CIRKDMiniBatchLoss(0.1, pool=pool, checkpointed=checkpointed)(fs, ft)["cirkd_mb"]
        value.backward()
        results.append((value.detach(), fs.grad))
    (v1, g1), (v2, g2) = results
    assert num(v1) == rel(v2, 1e-12)
    torch.testing.assert_close(g1, g2, rtol=1e-10, atol=1e-14)
    assert g1.abs().sum() > 0


# ----------------------------------------------------------------------------- CIRKD memory (section 9)


def tiny_memory(k=3, cs=3, ct=4, **kw) -> CIRKDMemoryLoss:
    opts = dict(pixel_memory=5, region_memory=3, pixel_contrast=6, region_contrast=3, pixels_per_image=2)
    opts.update(kw)
    return CIRKDMemoryLoss(k, cs, ct, **opts).double()


def test_cirkd_enqueue_fifo_semantics():
    """Per image and present class: the normalised class mean goes to the region queue and up to
    ``pixels_per_image`` distinct pixels of that class go to the pixel queue, in image order at the class's
    pointer, which advances by the number pushed and wraps around; other slots and classes stay as they were."""
    torch.manual_seed(11)
    loss = tiny_memory()  # K=3, C=4, pixel queue 5 slots, region queue 3 slots, 2 pixels per image
    t = F.normalize(torch.randn(2, 4, 3, 3, dtype=DT), dim=1)
    labels = torch.tensor(
        [
            [[0, 0, 255], [0, 0, 1], [255, 255, 255]],  # image 0: class 0 x4, class 1 x1, class 2 absent
            [[2, 2, 2], [2, 255, 0], [2, 255, 255]],  # image 1: class 0 x1, class 2 x5, class 1 absent
        ]
    )
    loss.region_ptr.copy_(torch.tensor([2, 0, 1]))
    loss.pixel_ptr.copy_(torch.tensor([4, 0, 3]))
    pix0, reg0 = loss.pixel_queue.clone(), loss.region_queue.clone()
    loss.enqueue(t, labels)

    def members(b, c):
        return [t[b, :, y, x] for y, x in pixels(3, 3) if int(labels[b, y, x]) == c]

    def mean_unit(b, c):
        return unit(sum(members(b, c)) / len(members(b, c)))

    # regions: class 0 -> slots 2 (image 0), 0 (image 1, wrapped); class 1 -> slot 0; class 2 -> slot 1
    expected_reg = reg0.clone()
    expected_reg[0, 2], expected_reg[0, 0] = mean_unit(0, 0), mean_unit(1, 0)
    expected_reg[1, 0] = mean_unit(0, 1)
    expected_reg[2, 1] = mean_unit(1, 2)
    torch.testing.assert_close(loss.region_queue, expected_reg, rtol=0, atol=1e-12)
    assert loss.region_ptr.tolist() == [1, 1, 2]

    # pixels: class 0 -> 2 of image 0's 4 at slots 4, 0 (wrapped), image 1's one at slot 1; class 1 -> slot 0;
    # class 2 -> 2 of image 1's 5 at slots 3, 4
    def assert_distinct_members(slots, b, c):
        written = [loss.pixel_queue[c, s] for s in slots]
        for v in written:
            assert any(torch.allclose(v, m, rtol=0, atol=1e-12) for m in members(b, c))
        assert len({tuple(v.tolist()) for v in written}) == len(written)

    assert_distinct_members([4, 0], 0, 0)
    assert_distinct_members([1], 1, 0)
    assert_distinct_members([0], 0, 1)
    assert_distinct_members([3, 4], 1, 2)
    untouched = {0: [2, 3], 1: [1, 2, 3, 4], 2: [0, 1, 2]}
    for c, slots in untouched.items():
        torch.testing.assert_close(loss.pixel_queue[c, slots], pix0[c, slots], rtol=0, atol=0)
    assert loss.pixel_ptr.tolist() == [2, 1, 0]


def ref_memory(loss: CIRKDMemoryLoss, fs, ft, target, pixel_slots, region_slots, train: bool):
    """Anchors = valid pixels; student: 1x1 conv -> BN -> ReLU -> 1x1 conv -> L2 norm; teacher: L2 norm;
    contrast = queue[k, slot] for every class k and the given slots; per anchor
    KL(sm(t.q / tau) || sm(s.q / tau)), averaged over anchors (outer temperature 1)."""
    b, _, h, w = fs.shape
    labels = nearest(target, h, w)
    w1 = loss.project[0].weight.detach()[:, :, 0, 0]
    bn = loss.project[1]
    w2 = loss.project[3].weight.detach()[:, :, 0, 0]
    places = [(i, y, x) for i in range(b) for y, x in pixels(h, w)]
    z = torch.stack([w1 @ fs[i, :, y, x] for i, y, x in places])  # all pixels: BN statistics use them all
    if train:
        mean, var = z.mean(0), ((z - z.mean(0)) ** 2).mean(0)
    else:
        mean, var = bn.running_mean, bn.running_var
    z = torch.relu((z - mean) / torch.sqrt(var + bn.eps) * bn.weight.detach() + bn.bias.detach())
    s_rows = {p: unit(w2 @ z[n]) for n, p in enumerate(places)}
    anchors = [(i, y, x) for i, y, x in places if int(labels[i, y, x]) != IGNORE]
    terms = {}
    for name, queue, slots in (
        ("cirkd_pix", loss.pixel_queue, pixel_slots),
        ("cirkd_reg", loss.region_queue, region_slots),
    ):
        contrast = torch.stack([queue[c, int(j)] for c in range(queue.shape[0]) for j in slots])
        total = 0.0
        for i, y, x in anchors:
            t_vec = unit(ft[i, :, y, x])
            total = total + kl(contrast @ t_vec / loss.temperature, contrast @ s_rows[(i, y, x)] / loss.temperature)
        terms[name] = total / len(anchors)
    return terms


def randomise_bn(loss: CIRKDMemoryLoss) -> None:
    bn = loss.project[1]
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_(0, 0.3)
        bn.running_mean.normal_(0, 0.3)
        bn.running_var.uniform_(0.5, 2.0)


def test_cirkd_memory_matches_formula_with_random_slots():
    """Eval mode (no enqueue): the loss draws one randperm of pixel slots, then one of region slots
    (``pixel_contrast // K + 1`` and ``region_contrast // K + 1`` of them), uses them for every class, and
    matches the naive KL over valid anchors."""
    torch.manual_seed(12)
    k = 4
    loss = tiny_memory(k=k, cs=3, ct=5, pixel_memory=9, region_memory=6, pixel_contrast=10, region_contrast=7)
    assert (loss.pixel_contrast, loss.region_contrast) == (10 // k + 1, 7 // k + 1)
    randomise_bn(loss)
    loss.eval()
    fs, ft = torch.randn(2, 3, 3, 4, dtype=DT), torch.randn(2, 5, 3, 4, dtype=DT)
    target = make_labels(2, 6, 8, k, seed=3)
    torch.manual_seed(123)
    got = loss(fs, ft, target)
    torch.manual_seed(123)
    pixel_slots = torch.randperm(9)[: loss.pixel_contrast]
    region_slots = torch.randperm(6)[: loss.region_contrast]
    expected = ref_memory(loss, fs, ft, target, pixel_slots, region_slots, train=False)
    assert num(got["cirkd_pix"]) == rel(expected["cirkd_pix"], 1e-9)
    assert num(got["cirkd_reg"]) == rel(expected["cirkd_reg"], 1e-9)


def test_cirkd_memory_training_enqueues_before_the_loss(monkeypatch):
    """Training mode: the batch's teacher embeddings are pushed first, so the contrast set (here the first
    slots, which the push overwrites) holds current-batch entries; BN uses batch statistics; the value
    matches the naive formula on the queues after the push."""
    torch.manual_seed(13)
    k = 3
    loss = tiny_memory(k=k, cs=3, ct=4, pixel_memory=8, region_memory=4, pixel_contrast=6, region_contrast=3)
    randomise_bn(loss)
    loss.train()
    fs, ft = torch.randn(2, 3, 3, 4, dtype=DT), torch.randn(2, 4, 3, 4, dtype=DT)
    target = make_labels(2, 6, 8, k, seed=4)
    before = loss.pixel_queue.clone(), loss.region_queue.clone()

    def first_slots(queue, count):
        return queue[:, :count].reshape(-1, queue.shape[2])

    monkeypatch.setattr(loss, "_contrast", first_slots)
    got = loss(fs, ft, target)
    assert not torch.equal(loss.pixel_queue[:, : loss.pixel_contrast], before[0][:, : loss.pixel_contrast])
    assert not torch.equal(loss.region_queue[:, : loss.region_contrast], before[1][:, : loss.region_contrast])
    expected = ref_memory(loss, fs, ft, target, range(loss.pixel_contrast), range(loss.region_contrast), train=True)
    assert num(got["cirkd_pix"]) == rel(expected["cirkd_pix"], 1e-9)
    assert num(got["cirkd_reg"]) == rel(expected["cirkd_reg"], 1e-9)


def test_cirkd_memory_without_valid_pixel_is_zero():
    """A batch whose labels are all ignored gives zero terms (and a finite gradient)."""
    loss = tiny_memory()
    fs = torch.randn(2, 3, 3, 3, dtype=DT, requires_grad=True)
    out = loss(fs, torch.randn(2, 4, 3, 3, dtype=DT), torch.full((2, 3, 3), IGNORE))
    assert num(out["cirkd_pix"]) == 0.0 and num(out["cirkd_reg"]) == 0.0
    (out["cirkd_pix"] + out["cirkd_reg"]).backward()
    assert torch.isfinite(fs.grad).all()


# ----------------------------------------------------------------------------- gradients


def _grad_cases():
    k = 4

    def logits(c=k):
        return torch.randn(2, c, 4, 5, dtype=DT), torch.randn(2, c, 4, 5, dtype=DT)

    def feats():
        return torch.randn(2, 3, 4, 5, dtype=DT), torch.randn(2, 6, 4, 5, dtype=DT)

    target = make_labels(2, 8, 10, k)
    return {
        "kd_mean": (lambda s, t: KDLoss(2.0)(s, t, target)["kd"], logits),
        "kd_pixel": (lambda s, t: KDLoss(1.0, "pixel", upsample=False)(s, t, target)["kd"], logits),
        "fitnet": (lambda s, t: FitNetLoss(3, 6).double()(s, t)["fitnet"], feats),
        "at": (lambda s, t: ATLoss()(s, teachers=[t])["at"], feats),
        "skd_pa": (lambda s, t: PairwiseLoss(2)(s, t)["skd_pa"], feats),
        "ifvd": (lambda s, t: IFVDLoss(k)(s, t, target)["ifvd"], feats),
        "cwd": (lambda s, t: CWDLoss()(s, t)["cwd"], logits),
        "dist": (lambda s, t: DISTLoss(aux_weight=0)(s, t)["dist"], logits),
        "cirkd_mb": (lambda s, t: CIRKDMiniBatchLoss()(s, t)["cirkd_mb"], feats),
        "cirkd_mem": (lambda s, t: sum(tiny_memory(k, 3, 6)(s, t, target).values()), feats),
    }


@pytest.mark.parametrize("name", list(_grad_cases()))
def test_gradients_reach_student_never_teacher(name):
    """Each loss back-propagates into the student's input and never into the teacher's."""
    torch.manual_seed(14)
    fn, inputs = _grad_cases()[name]
    s, t = (x.requires_grad_() for x in inputs())
    value = fn(s, t)
    assert torch.isfinite(value)
    value.backward()
    assert_student_only([s], [t])


# ----------------------------------------------------------------------------- adversarial (section 5, HO)


@pytest.mark.parametrize("shift", [-1.5, 0.0, 1.5])
def test_adversarial_hinge_and_generator_terms(shift):
    """adv_d = d_weight (mean relu(1 - D(t)) + mean relu(1 + D(s))) and adv = -mean D(s), with D the
    module's discriminator (eval mode: deterministic BN and spectral norm); ``shift`` moves D's outputs
    so that the hinge clamps on one side."""
    torch.manual_seed(15)
    loss = AdversarialLoss(5, d_weight=0.1).eval()
    with torch.no_grad():
        loss.discriminator.net[-1].bias.add_(shift)
    s, t = torch.randn(3, 5, 32, 32), torch.randn(3, 5, 32, 32) * 2
    out = loss(s, t)
    with torch.no_grad():
        d_s, d_t = loss.discriminator(s), loss.discriminator(t)
    hinge_t = sum(max(0.0, 1.0 - float(v)) for v in d_t.flatten()) / d_t.numel()
    hinge_s = sum(max(0.0, 1.0 + float(v)) for v in d_s.flatten()) / d_s.numel()
    assert num(out["adv_d"]) == pytest.approx(0.1 * (hinge_t + hinge_s), rel=1e-5, abs=1e-7)
    assert num(out["adv"]) == pytest.approx(-float(d_s.mean()), rel=1e-5, abs=1e-7)


def test_adversarial_gradients():
    """adv_d trains the discriminator only (no gradient to student or teacher logits); adv reaches the
    student logits and never the teacher's."""
    torch.manual_seed(16)
    loss = AdversarialLoss(4)
    s, t = torch.randn(2, 4, 8, 8, requires_grad=True), torch.randn(2, 4, 8, 8, requires_grad=True)
    out = loss(s, t)
    out["adv_d"].backward(retain_graph=True)
    assert s.grad is None or not s.grad.any()
    assert t.grad is None or not t.grad.any()
    assert any(p.grad is not None and p.grad.any() for p in loss.discriminator.parameters())
    out["adv"].backward()
    assert_student_only([s], [t])
    (name, module, optimizer) = loss.own_optimizers()[0]
    assert name == "adv_d" and module is loss.discriminator and isinstance(optimizer, torch.optim.Adam)
    assert optimizer.defaults["lr"] == 4e-4 and tuple(optimizer.defaults["betas"]) == (0.9, 0.99)
    assert loss.steps_after_student == {"adv_d"} and loss.own_terms == {"adv_d"}


@pytest.mark.parametrize("size", [(6, 6), (16, 16), (5, 20)])
def test_discriminator_accepts_small_maps(size):
    """The discriminator scores maps down to a few pixels (padded to 16) as well as 16 x 16 maps."""
    torch.manual_seed(17)
    loss = AdversarialLoss(5)
    s, t = torch.randn(2, 5, *size), torch.randn(2, 5, *size)
    scores = loss.discriminator(s)
    assert scores.shape[:2] == (2, 1) and torch.isfinite(scores).all()
    out = loss(s, t)
    assert all(torch.isfinite(v) for v in out.values())


# ----------------------------------------------------------------------------- builders


K = 5


def context(aux: bool = False) -> MethodContext:
    s = {"feat": 8, "logits": K}
    t = {"feat": 16, "logits": K}
    if aux:
        s["aux_logits"] = t["aux_logits"] = K
    return MethodContext(K, s, t)


REFERENCE_WEIGHTS = {
    "kd": {"kd": 10.0},
    "fitnet": {"kd": 1.0, "fitnet": 10.0},
    "at": {"kd": 1.0, "at": 10000.0},
    "skd": {"kd": 1.0, "skd_pa": 10.0, "adv": 0.001},
    "ifvd": {"kd": 1.0, "ifvd": 20.0, "adv": 0.001},
    "dist": {"dist": 1.0},
    "cirkd": {"kd": 1.0, "cirkd_mb": 1.0, "cirkd_pix": 0.1, "cirkd_reg": 0.1},
}


@pytest.mark.parametrize("method", list(REFERENCE_WEIGHTS))
def test_builders_reference_weights(method):
    """Each method's builder gives the reference default weights of methods.py's docstrings."""
    losses, weights = build_methods([method], context(aux=True), {}, {})
    assert weights == REFERENCE_WEIGHTS[method]
    if "kd" in losses and method != "kd":  # the CIRKD codebase's KD: T = 1, batchmean, at the feature grid
        kd = losses["kd"]
        assert (kd.temperature, kd.reduction, kd.upsample) == (1.0, "pixel", False)


def test_builders_module_settings():
    """Builders pass the reference hyper-parameters to the modules (CWD T = 4 and weight 3, feature term
    50; SKD pool 2 and D weight 0.1; CIRKD tau 0.1, pool 1, contrast sizes // K + 1; DIST aux 0.4)."""
    ctx = context(aux=True)
    losses, weights = build_methods(["cwd"], ctx, {}, {})
    assert weights["cwd"] == 3.0 and losses["cwd"].temperature == 4.0 and losses["cwd"].align is None
    losses, weights = build_methods(["cwd"], ctx, {"cwd": {"feature": True}}, {})
    assert weights["cwd_feat"] == 50.0 and losses["cwd"].align.weight.shape == (16, 8, 1, 1)
    losses, _ = build_methods(["skd"], ctx, {}, {})
    assert losses["skd_pa"].pool == 2 and losses["adv"].d_weight == 0.1
    losses, _ = build_methods(["cirkd"], ctx, {}, {})
    assert losses["cirkd_mb"].temperature == 0.1 and losses["cirkd_mb"].pool == 1
    mem = losses["cirkd_mem"]
    assert (mem.pixel_contrast, mem.region_contrast) == (4096 // K + 1, 1024 // K + 1)
    assert mem.pixel_queue.shape == (K, 20000, 16) and mem.region_queue.shape == (K, 2000, 16)
    losses, _ = build_methods(["dist"], ctx, {}, {})
    assert losses["dist"].aux_weight == 0.4 and losses["dist"].taps == ("logits", "aux_logits")


@pytest.mark.parametrize("method", ["kd", "fitnet", "at", "skd", "ifvd", "cwd", "dist", "cirkd"])
def test_builders_reject_unknown_option(method):
    """An unknown option key is a UserError that names the key."""
    with pytest.raises(UserError, match="bogus_key"):
        build_methods([method], context(aux=True), {method: {"bogus_key": 1}}, {})


def test_dist_aux_without_aux_logits_is_a_user_error():
    """DIST with aux_weight > 0 needs the 'aux_logits' tap on both sides; aux_weight=0 does not."""
    with pytest.raises(UserError, match="aux_logits"):
        build_methods(["dist"], context(aux=False), {}, {})
    losses, _ = build_methods(["dist"], context(aux=False), {"dist": {"aux_weight": 0}}, {})
    assert losses["dist"].taps == ("logits",)


# ----------------------------------------------------------------------------- end to end


def test_skd_distiller_two_trainer_steps():
    """A Distiller with SKD (KD + pair-wise + hinge GAN) on tiny segmentors runs two steps in the trainer's
    order (engine.task.train_step: own steps before the student, student step, then the discriminator's): finite losses,
    teacher untouched, student and discriminator updated."""
    torch.manual_seed(18)
    taps = {"feat": "head.dropout", "logits": "head.classifier"}
    student = build_segmentor("pspnet", "mobilenetv2_100", K, head_channels=8)
    teacher = build_segmentor("pspnet", "mobilenetv2_100", K, head_channels=16)
    ctx = MethodContext(K, probe_channels(student, taps), probe_channels(teacher, taps))
    losses, weights = build_methods(["skd"], ctx, {}, {})
    distiller = Distiller(student, teacher, taps, taps, losses, weights)
    assert [(s.term, s.after_student) for s in distiller.own_steps()] == [("adv_d", True)]
    disc = distiller.losses["adv"].discriminator
    teacher_before = {n: p.detach().clone() for n, p in teacher.named_parameters()}
    disc_before = [p.detach().clone() for p in disc.parameters()]
    student_before = [p.detach().clone() for p in student.parameters()]
    params = [p for group in distiller.param_groups(0.01, 10.0) for p in group["params"]]
    assert not {id(p) for p in disc.parameters()} & {id(p) for p in params}
    optimizer = torch.optim.SGD(params, lr=0.01)

    distiller.train()
    for _ in range(2):
        images = torch.randn(2, 3, 64, 64)
        targets = torch.randint(0, K, (2, 64, 64))
        targets[:, :8] = IGNORE
        out = distiller(images, targets)
        assert set(out.losses) == {"ce", "aux_ce", "kd", "skd_pa", "adv"} and set(out.own_losses) == {"adv_d"}
        assert all(torch.isfinite(v) for v in [*out.losses.values(), *out.own_losses.values()])
        train_step(distiller, out, optimizer)
    for n, p in teacher.named_parameters():
        assert p.grad is None and torch.equal(p, teacher_before[n]), n
    assert not teacher.training
    assert any(not torch.equal(a, p) for a, p in zip(disc_before, disc.parameters()))
    assert any(not torch.equal(a, p) for a, p in zip(student_before, student.parameters()))


def _saved_bytes(fn) -> int:
    """Bytes of the tensors autograd keeps for backward while ``fn()`` runs its forward pass."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def test_cirkd_minibatch_memory_for_backward_does_not_grow_with_hw_squared():
    """With checkpointing the graph keeps the (normalised) feature maps, not the B^2 hw x hw relation
    matrices and their softmaxes: at 32 x 32 positions the direct computation keeps hundreds of times
    more bytes than the feature maps, the checkpointed one a small multiple of them (B x the inputs)."""
    s = torch.randn(2, 8, 32, 32, requires_grad=True)
    t = torch.randn(2, 8, 32, 32)
    feature_bytes = s.numel() * s.element_size()
    direct = _saved_bytes(lambda: CIRKDMiniBatchLoss(checkpointed=False)(s, t))
    checkpointed = _saved_bytes(lambda: CIRKDMiniBatchLoss(checkpointed=True)(s, t))
    relation_bytes = 2 * 1024 * 2048 * 4  # one anchor image's relations to the batch, float32
    assert direct > 2 * relation_bytes
    assert checkpointed < 16 * feature_bytes  # per anchor image: its maps and the batch's (views, saved per call)


def test_skd_pairwise_affinity_is_over_pooled_nodes():
    """At a Cityscapes 1/8 map (64 x 128) the default 2x2 pooling gives 2048 nodes per image, the
    reference's node count, so the affinity matrix is 2048^2 (not 8192^2)."""
    from segdistill.distill.skd import pair_affinity

    assert pair_affinity(torch.randn(1, 4, 64, 128), pool=2).shape == (1, 2048, 2048)
    assert pair_affinity(torch.randn(1, 4, 65, 129), pool=2).shape == (1, 33 * 65, 33 * 65)  # ceil mode


def test_cirkd_minibatch_checkpoints_only_when_the_relations_are_large(monkeypatch):
    """Auto mode: direct at small maps, checkpointed above CHECKPOINT_ABOVE_BYTES; float32 values and
    gradients equal to the last digit either way (the same operators run again in backward)."""
    from segdistill.distill import cirkd

    calls = []
    real = cirkd.checkpoint
    monkeypatch.setattr(cirkd, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    torch.manual_seed(11)
    base_s, ft = torch.randn(2, 4, 6, 7), torch.randn(2, 5, 6, 7)
    results = []
    for limit in (10**9, 0):  # relations 2*2*42*42*4 bytes: under the first limit, over the second
        monkeypatch.setattr(cirkd, "CHECKPOINT_ABOVE_BYTES", limit)
        fs = base_s.clone().requires_grad_()
        value = CIRKDMiniBatchLoss(0.1)(fs, ft)["cirkd_mb"]
        value.backward()
        results.append((value.detach(), fs.grad, len(calls)))
    (v1, g1, n1), (v2, g2, n2) = results
    assert n1 == 0 and n2 == 2  # one checkpoint per anchor image, only over the limit
    assert torch.equal(v1, v2) and torch.equal(g1, g2)
