"""DKD (Zhao et al. CVPR 2022) and logit standardisation (Sun et al. CVPR 2024) for KD, DKD and DIST,
against independent formulas (/work/evidence/i16_dkd_ls.md).

The references are written as Python loops over pixels and classes in float64 (torch only on scalars
and short vectors) and never call the implementation's helpers. Labels contain ignored (255) pixels, an
out-of-range label and an absent class.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from segdistill import UserError
from segdistill.distill.dist import DISTLoss
from segdistill.distill.dkd import DKDLoss, dkd_pixel_terms
from segdistill.distill.kd import KDLoss
from segdistill.distill.logit_std import standardize

DT = torch.float64
IGNORE = 255
K = 5


# ----------------------------------------------------------------------------- naive helpers


def num(x: torch.Tensor | float) -> float:
    return float(x.detach()) if isinstance(x, torch.Tensor) else float(x)


def rel(expected: torch.Tensor | float, tol: float = 1e-9):
    return pytest.approx(num(expected), rel=tol, abs=tol * 1e-3)


def make_labels(b: int, h: int, w: int, k: int = K, seed: int = 0) -> torch.Tensor:
    """Labels in ``[0, k-1)`` (class ``k-1`` absent), ~25% ignored, the first row ignored, one pixel
    out of range (``k + 2``, treated as ignored)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, k - 1, (b, h, w), generator=g)
    labels[torch.rand(b, h, w, generator=g) < 0.25] = IGNORE
    labels[:, 0, :] = IGNORE
    labels[0, -1, -1] = k + 2
    return labels


def logits(seed: int, b: int = 2, k: int = K, h: int = 3, w: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, k, h, w, generator=g, dtype=DT) * 2, torch.randn(b, k, h, w, generator=g, dtype=DT) * 3


def pixels(h: int, w: int):
    return [(y, x) for y in range(h) for x in range(w)]


def nearest(target: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """torch's ``mode='nearest'``: source index ``floor(dst * in / out)``."""
    b, big_h, big_w = target.shape
    out = torch.empty(b, h, w, dtype=torch.long)
    for y, x in pixels(h, w):
        out[:, y, x] = target[:, (y * big_h) // h, (x * big_w) // w]
    return out


def bilinear_align_corners(x: torch.Tensor, big_h: int, big_w: int) -> torch.Tensor:
    """``B x K x h x w`` -> ``B x K x H x W``, bilinear with ``align_corners=True``, pixel by pixel."""
    b, k, h, w = x.shape
    out = x.new_zeros(b, k, big_h, big_w)
    for yy, xx in pixels(big_h, big_w):
        sy, sx = yy * (h - 1) / (big_h - 1), xx * (w - 1) / (big_w - 1)
        y0, x0 = min(int(math.floor(sy)), h - 1), min(int(math.floor(sx)), w - 1)
        y1, x1, dy, dx = min(y0 + 1, h - 1), min(x0 + 1, w - 1), sy - y0, sx - x0
        out[:, :, yy, xx] = (
            (1 - dy) * (1 - dx) * x[:, :, y0, x0]
            + (1 - dy) * dx * x[:, :, y0, x1]
            + dy * (1 - dx) * x[:, :, y1, x0]
            + dy * dx * x[:, :, y1, x1]
        )
    return out


def zscore(v: list[float]) -> list[float]:
    """The reference's ``normalize``: ``(v - mean) / (1e-7 + std)``, std with divisor ``K - 1``."""
    n = len(v)
    mean = sum(v) / n
    std = math.sqrt(sum((a - mean) ** 2 for a in v) / (n - 1))
    return [(a - mean) / (1e-7 + std) for a in v]


def softmax(v: list[float]) -> list[float]:
    m = max(v)
    e = [math.exp(a - m) for a in v]
    return [a / sum(e) for a in e]


def kl(p: list[float], q: list[float]) -> float:
    """``sum p (log p - log q)``, terms with ``p = 0`` left out."""
    return sum(a * (math.log(a) - math.log(c)) for a, c in zip(p, q) if a > 0)


def vec(x: torch.Tensor, b: int, y: int, xx: int, std: bool) -> list[float]:
    v = [float(a) for a in x[b, :, y, xx]]
    return zscore(v) if std else v


# ----------------------------------------------------------------------------- logit standardisation


def test_standardize_matches_formula():
    """z-score over dim 1 with the unbiased std (K - 1) and eps 1e-7 added to the std."""
    s, _ = logits(0)
    got = standardize(s)
    for b in range(2):
        for y, x in pixels(3, 4):
            expected = zscore([float(a) for a in s[b, :, y, x]])
            for k in range(K):
                assert float(got[b, k, y, x]) == pytest.approx(expected[k], rel=1e-12, abs=1e-12)
    # unbiased: the standardised vector has sum of squares K - 1 (up to the eps), not K
    assert float(got[0, :, 1, 1].pow(2).sum()) == pytest.approx(K - 1, rel=1e-6)


def test_standardize_other_dim_and_constant_pixel():
    """``dim`` selects the class axis; a constant pixel maps to 0 with a zero (not NaN) gradient."""
    z = torch.randn(3, 6, dtype=DT)
    assert torch.allclose(standardize(z, dim=-1), standardize(z.t(), dim=0).t(), rtol=0, atol=1e-15)
    literal = (z - z.mean(dim=-1, keepdim=True)) / (1e-7 + z.std(dim=-1, keepdim=True))  # the reference's line
    assert torch.allclose(standardize(z, dim=-1), literal, rtol=0, atol=1e-12)
    flat = torch.full((1, 4, 1, 1), 2.5, dtype=DT, requires_grad=True)
    out = standardize(flat)
    assert not out.any()
    out.sum().backward()
    assert torch.isfinite(flat.grad).all() and not flat.grad.any()
    with pytest.raises(UserError, match="at least 2 classes"):
        standardize(torch.zeros(2, 1, 3, 3))


# ----------------------------------------------------------------------------- KD with standardize


def ref_kd(s, t, temperature, reduction, size, std):
    """``T^2 KL(sm(t'/T) || sm(s'/T))`` per pixel (``'`` = z-scored when ``std``), after the upsampling;
    'pixel' = mean over pixels, 'mean' = that / K."""
    if size is not None:
        s, t = bilinear_align_corners(s, *size), bilinear_align_corners(t, *size)
    b, k, h, w = s.shape
    total = 0.0
    for i in range(b):
        for y, x in pixels(h, w):
            zs = [a / temperature for a in vec(s, i, y, x, std)]
            zt = [a / temperature for a in vec(t, i, y, x, std)]
            total += temperature**2 * kl(softmax(zt), softmax(zs))
    per_pixel = total / (b * h * w)
    return per_pixel if reduction == "pixel" else per_pixel / k


@pytest.mark.parametrize("std", [False, True])
@pytest.mark.parametrize(("temperature", "reduction", "upsample"), [(1.0, "mean", True), (2.0, "pixel", False)])
def test_kd_standardize_matches_formula(std, temperature, reduction, upsample):
    s, t = logits(1)
    labels = make_labels(2, 5, 6)
    got = KDLoss(temperature, reduction, upsample=upsample, standardize=std)(s, t, labels)["kd"]
    assert got.dtype == DT
    assert num(got) == rel(ref_kd(s, t, temperature, reduction, (5, 6) if upsample else None, std))


# ----------------------------------------------------------------------------- DKD


def ref_dkd(s, t, labels, alpha, beta, temperature, upsample, std):
    """alpha T^2 mean TCKD + beta T^2 mean NCKD over valid pixels (label in [0, K), not 255); labels
    nearest-resized to the logits (``upsample=False``) or logits bilinearly upsampled to the labels.
    TCKD: KL of [p_c, sum_{k != c} p_k]; NCKD: KL of the softmax over the non-target classes only."""
    big_h, big_w = labels.shape[-2:]
    if upsample:
        s, t = bilinear_align_corners(s, big_h, big_w), bilinear_align_corners(t, big_h, big_w)
    else:
        labels = nearest(labels, *s.shape[-2:])
    b, k, h, w = s.shape
    tckd = nckd = 0.0
    count = 0
    for i in range(b):
        for y, x in pixels(h, w):
            c = int(labels[i, y, x])
            if not 0 <= c < k:
                continue
            count += 1
            zs = [a / temperature for a in vec(s, i, y, x, std)]
            zt = [a / temperature for a in vec(t, i, y, x, std)]
            ps, pt = softmax(zs), softmax(zt)
            bs = [ps[c], sum(ps[j] for j in range(k) if j != c)]
            bt = [pt[c], sum(pt[j] for j in range(k) if j != c)]
            tckd += kl(bt, bs)
            others = [j for j in range(k) if j != c]
            nckd += kl(softmax([zt[j] for j in others]), softmax([zs[j] for j in others]))
    if count == 0:
        return 0.0, 0.0
    return alpha * temperature**2 * tckd / count, beta * temperature**2 * nckd / count


@pytest.mark.parametrize("std", [False, True])
@pytest.mark.parametrize(
    ("alpha", "beta", "temperature", "upsample"),
    [(1.0, 2.0, 1.0, False), (0.5, 8.0, 4.0, False), (1.0, 2.0, 2.0, True)],
)
def test_dkd_matches_formula(std, alpha, beta, temperature, upsample):
    s, t = logits(2)
    labels = make_labels(2, 7, 9, seed=3) if upsample else make_labels(2, 6, 8, seed=3)
    out = DKDLoss(alpha, beta, temperature, upsample=upsample, standardize=std)(s, t, labels)
    assert set(out) == set(DKDLoss.terms)
    exp_tckd, exp_nckd = ref_dkd(s, t, labels, alpha, beta, temperature, upsample, std)
    assert out["dkd_tckd"].dtype == DT
    assert num(out["dkd_tckd"]) == rel(exp_tckd)
    assert num(out["dkd_nckd"]) == rel(exp_nckd)


def test_dkd_same_grid_labels_and_float32():
    """Labels already on the logits' grid are used as they are; float32 inputs give float32 terms close to
    the float64 formula."""
    s, t = logits(4)
    labels = make_labels(2, 3, 4, seed=5)
    out = DKDLoss(temperature=2.0)(s.float(), t.float(), labels)
    exp_tckd, exp_nckd = ref_dkd(s, t, labels, 1.0, 2.0, 2.0, False, False)
    assert out["dkd_tckd"].dtype == torch.float32
    assert num(out["dkd_tckd"]) == pytest.approx(exp_tckd, rel=1e-5)
    assert num(out["dkd_nckd"]) == pytest.approx(exp_nckd, rel=1e-5)


def test_dkd_terms_decompose_kd():
    """The paper's identity, per pixel: KL(p_t || p_s) = TCKD + (1 - p_t[c]) NCKD."""
    s, t = logits(6, b=1, h=1, w=1)
    labels = torch.tensor([[[2]]])
    tckd, nckd, count = dkd_pixel_terms(s, t, labels, 1.0)
    zs, zt = vec(s, 0, 0, 0, False), vec(t, 0, 0, 0, False)
    pt = softmax(zt)
    assert int(count) == 1
    assert num(tckd) + (1 - pt[2]) * num(nckd) == pytest.approx(kl(pt, softmax(zs)), rel=1e-12)


def test_dkd_without_valid_pixel_is_zero():
    s, t = logits(7)
    s.requires_grad_()
    out = DKDLoss(temperature=4.0, standardize=True)(s, t, torch.full((2, 6, 8), IGNORE))
    assert num(out["dkd_tckd"]) == 0.0 and num(out["dkd_nckd"]) == 0.0
    (out["dkd_tckd"] + out["dkd_nckd"]).backward()
    assert torch.isfinite(s.grad).all() and not s.grad.any()


def test_dkd_confident_student_stays_finite():
    """A student whose target probability rounds to 1 in float32 (the reference's log of the summed
    non-target probabilities would be -inf) still gives a finite loss and gradient."""
    s = torch.zeros(1, 3, 1, 1)
    s[0, 1] = 200.0
    s.requires_grad_()
    t = torch.tensor([0.5, 1.0, -0.5]).reshape(1, 3, 1, 1)
    out = DKDLoss()(s, t, torch.tensor([[[1]]]))
    total = out["dkd_tckd"] + out["dkd_nckd"]
    assert torch.isfinite(total) and num(out["dkd_tckd"]) > 10
    total.backward()
    assert torch.isfinite(s.grad).all()


def test_dkd_bad_inputs():
    s, t = logits(8)
    with pytest.raises(UserError, match="same number of classes"):
        DKDLoss()(s, t[:, :4], make_labels(2, 3, 4))
    with pytest.raises(UserError, match="temperature"):
        DKDLoss(temperature=0)


def test_dkd_under_autocast_is_float32():
    s, t = logits(9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = DKDLoss()(s.float(), t.float(), make_labels(2, 6, 8))
    assert out["dkd_tckd"].dtype == torch.float32 and out["dkd_nckd"].dtype == torch.float32


# ----------------------------------------------------------------------------- DIST with standardize


def pearson(u: list[float], v: list[float]) -> float:
    mu, mv = sum(u) / len(u), sum(v) / len(v)
    du, dv = [a - mu for a in u], [a - mv for a in v]
    norm = math.sqrt(sum(a * a for a in du)) * math.sqrt(sum(a * a for a in dv))
    return sum(a * c for a, c in zip(du, dv)) / (norm + 1e-8)


def ref_dist(s, t, beta, gamma, tau, std):
    """tau^2 (beta (1 - mean_pixels rho over classes) + gamma (1 - mean_classes rho over all pixels))
    of ``softmax(z' / tau)``, ``z'`` z-scored when ``std``."""
    b, k, h, w = s.shape
    rows_s = [softmax([a / tau for a in vec(s, i, y, x, std)]) for i in range(b) for y, x in pixels(h, w)]
    rows_t = [softmax([a / tau for a in vec(t, i, y, x, std)]) for i in range(b) for y, x in pixels(h, w)]
    inter = 1 - sum(pearson(p, q) for p, q in zip(rows_s, rows_t)) / len(rows_s)
    intra = 1 - sum(pearson([r[c] for r in rows_s], [r[c] for r in rows_t]) for c in range(k)) / k
    return tau**2 * (beta * inter + gamma * intra)


@pytest.mark.parametrize("std", [False, True])
@pytest.mark.parametrize(("beta", "gamma", "tau"), [(1.0, 1.0, 1.0), (2.0, 0.5, 2.0)])
def test_dist_standardize_matches_formula(std, beta, gamma, tau):
    s, t = logits(10)
    sa, ta = logits(11)
    loss = DISTLoss(beta, gamma, tau, aux_weight=0.4, standardize=std)
    main = ref_dist(s, t, beta, gamma, tau, std)
    assert num(loss(s, t)["dist"]) == rel(main)
    both = loss.forward_taps({"logits": s, "aux_logits": sa}, {"logits": t, "aux_logits": ta}, None)["dist"]
    assert num(both) == rel(main + 0.4 * ref_dist(sa, ta, beta, gamma, tau, std))


# ----------------------------------------------------------------------------- standardize=False: unchanged


def kd_before(student_logits, teacher_logits, labels, temperature, reduction, upsample):
    """A copy of KDLoss.forward before the standardize option (issue 16)."""
    with torch.autocast(device_type=student_logits.device.type, enabled=False):
        z_s = student_logits if student_logits.dtype == torch.float64 else student_logits.float()
        z_t = teacher_logits.detach()
        z_t = z_t if z_t.dtype == torch.float64 else z_t.float()
        size = tuple(labels.shape[-2:]) if (upsample and labels is not None) else tuple(z_s.shape[-2:])
        if tuple(z_s.shape[-2:]) != size:
            z_s = F.interpolate(z_s, size=size, mode="bilinear", align_corners=True)
        if tuple(z_t.shape[-2:]) != size:
            z_t = F.interpolate(z_t, size=size, mode="bilinear", align_corners=True)
        temp = temperature
        log_q = F.log_softmax(z_s / temp, dim=1)
        log_p = F.log_softmax(z_t / temp, dim=1)
        kl_map = (log_p.exp() * (log_p - log_q)).sum(dim=1)
        loss = kl_map.mean() if reduction == "pixel" else kl_map.mean() / z_s.shape[1]
    return loss * temp * temp


def dist_before(s, t, beta, gamma, tau):
    """A copy of DISTLoss's main-logit path (``_one`` + ``dist_relation_loss``) before issue 16."""

    def pearson_rows(a, b, eps=1e-8):
        a = a - a.mean(dim=1, keepdim=True)
        b = b - b.mean(dim=1, keepdim=True)
        return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)

    with torch.autocast(device_type=s.device.type, enabled=False):
        z_s = s if s.dtype == torch.float64 else s.float()
        z_t = t.detach()
        z_t = z_t if z_t.dtype == torch.float64 else z_t.float()
        k = z_s.shape[1]
        p_s = (z_s / tau).softmax(dim=1).permute(0, 2, 3, 1).reshape(-1, k)
        p_t = (z_t / tau).softmax(dim=1).permute(0, 2, 3, 1).reshape(-1, k)
        inter = 1.0 - pearson_rows(p_s, p_t).mean()
        intra = 1.0 - pearson_rows(p_s.t(), p_t.t()).mean()
        return tau**2 * (beta * inter + gamma * intra)


@pytest.mark.parametrize("dtype", [torch.float32, DT])
def test_standardize_off_is_bitwise_unchanged(dtype):
    s, t = (x.to(dtype) for x in logits(12, k=19, h=6, w=7))
    labels = make_labels(2, 11, 13, k=19)
    for temperature, reduction, upsample in [(1.0, "mean", True), (2.5, "pixel", False), (4.0, "mean", False)]:
        got = KDLoss(temperature, reduction, upsample)(s, t, labels)["kd"]
        assert torch.equal(got, kd_before(s, t, labels, temperature, reduction, upsample))
    for beta, gamma, tau in [(1.0, 1.0, 1.0), (2.0, 0.5, 4.0)]:
        got = DISTLoss(beta, gamma, tau, aux_weight=0)(s, t)["dist"]
        assert torch.equal(got, dist_before(s, t, beta, gamma, tau))


# ----------------------------------------------------------------------------- gradients


CASES = {
    "kd": lambda std: lambda s, t, y: KDLoss(2.0, standardize=std)(s, t, y)["kd"],
    "dkd": lambda std: lambda s, t, y: sum(DKDLoss(temperature=2.0, standardize=std)(s, t, y).values()),
    "dkd_up": lambda std: lambda s, t, y: sum(DKDLoss(upsample=True, standardize=std)(s, t, y).values()),
    "dist": lambda std: lambda s, t, y: DISTLoss(aux_weight=0, standardize=std)(s, t)["dist"],
}


@pytest.mark.parametrize("std", [False, True])
@pytest.mark.parametrize("name", list(CASES))
def test_gradients_reach_student_never_teacher(name, std):
    s, t = (x.requires_grad_() for x in logits(13))
    value = CASES[name](std)(s, t, make_labels(2, 6, 8))
    assert torch.isfinite(value)
    value.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and torch.isfinite(s.grad).all()
    assert t.grad is None
