"""APDLoss's three kernels, each a ``torch.autograd.Function`` with an analytic backward.

* :class:`NormPoolLogits` (one per side): per-pixel L2 normalisation, class prototypes pooled under
  the one-hot mask (per group of images, optionally summed over DDP ranks), the prototypes' own L2
  normalisation and the cosine logits. It reads the feature map three times forward (the norms, the
  pooling matmul, the logits matmul) and touches it four times backward (two matmuls that read it, one
  that writes the gradient, one in-place correction that reads both); the per-pixel norms are computed
  once and reused, and the normalised map is never materialised.
* :class:`AdaptiveKL`: per-image sums of KL(softmax(z_t) || softmax(z_s)) over the present classes; the
  gradient into ``z_s`` is ``softmax(z_s) - softmax(z_t)`` (saved at forward).
* :class:`UpsampleCrossEntropy`: per-image sums of the cross-entropy of logits upsampled bilinearly
  (``align_corners=True``) to the labels, computed over chunks of output rows: the full-resolution
  ``B x K x H x W`` logits and their gradient never exist at once. The gradient into the low-resolution
  logits (the transposed interpolation of ``softmax - onehot``) is accumulated at forward and scaled
  by the incoming per-image gradient at backward.

No kernel reads a value back to the device's host: every shape follows from the input shapes (the
interpolation's rows and weights are computed on the host from the sizes alone).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

EPS = 1e-12  # F.normalize's eps: a vector is divided by max(norm, EPS)
ABSENT = -1.0e4  # logit for classes absent from the pool: exp() underflows to exactly 0
# Elements of one chunk of full-resolution logits in UpsampleCrossEntropy. One CPU thread: 1 MB of
# float32 (a few chunks fit the caches; the best of 2^15 to 2^23 measured here). Several threads: 4 MB,
# fewer parallel regions (as fast when the cores are free, 2.5x faster than 1 MB when they are
# oversubscribed and OpenMP's threads spin-wait). An accelerator: fewer kernel launches (not measured).
CHUNK_ELEMENTS = 1 << 18
CHUNK_ELEMENTS_THREADS = 1 << 20
CHUNK_ELEMENTS_ACCELERATOR = 1 << 24


def ranks_sum(x: torch.Tensor) -> torch.Tensor:
    """A copy of ``x`` summed over the DDP ranks (a copy of ``x`` when not distributed). Every rank
    must call it the same number of times, in the same order."""
    x = x.clone()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def group_sum(x: torch.Tensor, groups: int) -> torch.Tensor:
    """``B x ...`` summed over ``groups`` strided groups of rows -> ``groups x ...``: row ``i`` belongs to
    group ``i % groups``. Zero rows pad ``B`` to a multiple of ``groups``, then one reshaped sum: no loop,
    static shapes, deterministic."""
    b = x.shape[0]
    rows = -(-b // groups)  # images per group; the last groups have one fewer when B is not a multiple
    if rows * groups != b:
        x = torch.cat([x, x.new_zeros((rows * groups - b, *x.shape[1:]))])
    return x.reshape(rows, groups, *x.shape[1:]).sum(dim=0)


def per_image(x: torch.Tensor, b: int) -> torch.Tensor:
    """A group's value for each of its images: ``G x ...`` -> ``B x ...``, row ``i`` is ``x[i % G]``
    (the layout of :func:`group_sum`). One group: an expanded view, no copy."""
    groups = x.shape[0]
    if groups == 1:
        return x.expand(b, *x.shape[1:])
    return x.repeat(-(-b // groups), *([1] * (x.dim() - 1)))[:b]


def class_mask(labels: torch.Tensor, num_classes: int, ignore_index: int, dtype: torch.dtype) -> torch.Tensor:
    """``B x h x w`` labels -> one-hot ``B x K x hw`` in ``dtype``; ignored or out-of-range pixels are all 0."""
    b = labels.shape[0]
    flat = labels.reshape(b, 1, -1)
    valid = (flat >= 0) & (flat < num_classes) & (flat != ignore_index)
    classes = torch.arange(num_classes, device=labels.device).view(1, num_classes, 1)
    return ((flat == classes) & valid).to(dtype)


class NormPoolLogits(torch.autograd.Function):
    """One side of APD: ``s = f / max(|f|, eps)`` per pixel, per-group class sums ``S = onehot @ s^T``
    (summed over ranks when ``reduce_ranks``), prototypes ``P = S / max(|S|, eps)`` and cosine logits
    ``z = scale * P @ s``.

    ``forward(f, onehot, groups, scale, reduce_ranks)``: ``f B x C x h x w`` (contiguous), ``onehot
    B x K x hw`` (0/1, ignored pixels all 0), image ``i`` in group ``i % groups``. Returns ``z B x K x hw``
    (every class, absent ones included) and ``P groups x K x C`` (absent classes zero vectors).

    Backward, with ``a = scale * dz / |f|`` (``B x K x hw``) and the per-pixel gradient ``g`` of ``s``:
    ``dP = dP_in + group_sum(a @ f^T)``; ``dS = (dP - P <P, dP>) / |S|`` (summed over ranks);
    ``g / |f| = [P; dS]^T @ [a; onehot / |f|]`` (one matmul writing the gradient); the normalisation's
    radial part ``<s, g> = sum_k dz z + sum_k onehot <dS, s>`` comes from ``z`` (saved) and ``dS @ f`` (one
    matmul), so ``df = g / |f| - f <s, g> / |f|^2``, one in-place pass.
    """

    @staticmethod
    def forward(ctx, f, onehot, groups, scale, reduce_ranks):  # noqa: D102
        b, c, h, w = f.shape
        x = f.reshape(b, c, h * w)
        norm = torch.linalg.vector_norm(x, dim=1)  # B x hw                      (read 1)
        inv = 1.0 / norm.clamp_min(EPS)
        weights = onehot * inv[:, None, :]  # B x K x hw: onehot / |f|
        sums = group_sum(torch.bmm(weights, x.transpose(1, 2)), groups)  # G x K x C  (read 2)
        if reduce_ranks:
            sums = ranks_sum(sums)
        sums_norm = torch.linalg.vector_norm(sums, dim=-1)  # G x K
        protos = sums / sums_norm.clamp_min(EPS)[..., None]
        z = torch.bmm(per_image(protos, b), x)  # B x K x hw                     (read 3)
        z.mul_((scale * inv)[:, None, :])
        ctx.groups, ctx.scale, ctx.reduce_ranks, ctx.spatial = groups, scale, reduce_ranks, (h, w)
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(x, norm, inv, weights, protos, sums_norm, z)
        return z, protos

    @staticmethod
    @once_differentiable  # analytic: a second derivative through it would be wrong, so it raises
    def backward(ctx, dz, dprotos):  # noqa: D102
        x, norm, inv, weights, protos, sums_norm, z = ctx.saved_tensors
        b, c, _ = x.shape
        with torch.autocast(device_type=x.device.type, enabled=False):
            if dz is None:
                dz = torch.zeros_like(z)
            a = dz * (ctx.scale * inv)[:, None, :]  # B x K x hw: the gradient of P @ f
            dp = group_sum(torch.bmm(a, x.transpose(1, 2)), ctx.groups)  # G x K x C   (read 1)
            if dprotos is not None:
                dp = dp + dprotos
            radial = (protos * dp).sum(dim=-1, keepdim=True) * (sums_norm > EPS)[..., None]
            dsums = (dp - protos * radial) / sums_norm.clamp_min(EPS)[..., None]
            if ctx.reduce_ranks:  # the sums were summed over ranks: so are their gradients
                dsums = ranks_sum(dsums)
            protos_img, dsums_img = per_image(protos, b), per_image(dsums, b)  # B x K x C
            along = (dz * z).sum(dim=1) + (weights * torch.bmm(dsums_img, x)).sum(dim=1)  # B x hw   (read 2)
            coef = along * inv * inv * (norm > EPS)  # <s, g> / |f|^2
            left = torch.cat([protos_img, dsums_img], dim=1).transpose(1, 2)  # B x C x 2K
            df = torch.bmm(left, torch.cat([a, weights], dim=1))  # B x C x hw               (write)
            df.addcmul_(x, coef[:, None, :], value=-1.0)  # (read 3, 4)
        return df.view(b, c, *ctx.spatial), None, None, None, None


class AdaptiveKL(torch.autograd.Function):
    """Per-image sums of ``KL(softmax(z_t) || softmax(z_s))`` over the classes in ``keep``.

    ``forward(z_s, z_t, keep)``: ``z_s``, ``z_t B x K x hw`` (``z_t`` a constant), ``keep B x K`` bool.
    Returns ``B``. Classes not kept get the logit ``ABSENT`` on both sides (probability exactly 0).
    Backward: ``dz_s = g_b * (softmax(z_s) - softmax(z_t))`` (zero on the classes not kept).
    """

    @staticmethod
    def forward(ctx, z_s, z_t, keep):  # noqa: D102
        absent = ~keep[:, :, None]
        log_q = torch.log_softmax(z_s.masked_fill(absent, ABSENT), dim=1)
        log_p = torch.log_softmax(z_t.masked_fill(absent, ABSENT), dim=1)
        p = log_p.exp()
        kl = (p * (log_p - log_q)).sum(dim=(1, 2))
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(log_q.exp_().sub_(p))
        return kl

    @staticmethod
    @once_differentiable  # analytic: a second derivative through it would be wrong, so it raises
    def backward(ctx, grad):  # noqa: D102
        (q_minus_p,) = ctx.saved_tensors
        return q_minus_p * grad[:, None, None], None, None


class UpsampleCrossEntropy(torch.autograd.Function):
    """Per-image sums of the cross-entropy of ``z * keep`` upsampled bilinearly (``align_corners=True``)
    to the labels' size; ignored pixels contribute 0.

    ``forward(z, keep, labels, ignore_index, bound)``: ``z B x K x h x w`` with ``|z| <= bound``, ``keep
    B x K`` (float 0/1), ``labels B x H x W``. Returns ``B``.

    The upsampling is separable, image by image: a horizontal pass on the low-resolution map (``h x K x
    W``, kept whole), then chunks of ``r`` output rows: one matmul ``Ry[rows, band] @ band`` with
    the interpolation matrix ``Ry H x h`` gives ``r x K x W`` logits; their softmax over K (a log-softmax
    where a probability could underflow), the probability of each pixel's class, and (when ``z`` needs a
    gradient) ``softmax - onehot`` on valid pixels, sent back through ``Ry^T`` (``addmm_`` into ``h x K x
    W``), and the horizontal pass transposed (``upsample_linear1d_backward``).
    Backward: the saved ``B x K x h x w`` gradient times the incoming per-image gradient.
    """

    @staticmethod
    def forward(ctx, z, keep, labels, ignore_index, bound):  # noqa: D102
        b, k, h, w = z.shape
        out_h, out_w = labels.shape[-2:]
        need_grad = ctx.needs_input_grad[0]
        # softmax, then the log of the picked probability, unless it can underflow: the logits lie in
        # [-bound, bound], so every probability is at least exp(-2 bound) / K
        via_softmax = 2.0 * bound + math.log(k) < -math.log(torch.finfo(z.dtype).tiny) - 1.0
        zk = z * keep[:, :, None, None]  # absent classes 0
        ry, first, last = interpolation_matrix(out_h, h, z.dtype, z.device)  # H x h, source rows of each row
        # the labels: weight 1 on valid pixels, class index (0 where ignored)
        valid = labels != ignore_index
        weight = valid.to(z.dtype)[:, :, None, :]  # B x H x 1 x W
        minus_weight = -weight
        index = labels.masked_fill(~valid, 0)[:, :, None, :]  # B x H x 1 x W
        picked = z.new_empty(b, out_h, 1, out_w)  # probability (or log) of each pixel's class
        grad = torch.empty_like(z) if need_grad else None
        grad_rows = z.new_empty(h, k * out_w) if need_grad else None
        if z.device.type != "cpu":
            chunk_elements = CHUNK_ELEMENTS_ACCELERATOR
        else:
            chunk_elements = CHUNK_ELEMENTS if torch.get_num_threads() == 1 else CHUNK_ELEMENTS_THREADS
        step = max(1, min(out_h, chunk_elements // (k * out_w)))
        up = z.new_empty(step, k * out_w)
        probs = z.new_empty(step, k, out_w)
        for image in range(b):
            # the horizontal pass, rows first: h x K x W
            rows = F.interpolate(zk[image].transpose(0, 1).contiguous(), size=out_w, mode="linear", align_corners=True)
            rows = rows.view(h, k * out_w)
            if need_grad:
                grad_rows.zero_()
            for start in range(0, out_h, step):
                stop = min(out_h, start + step)
                r = stop - start
                lo, hi = first[start], last[stop - 1] + 1  # the input rows these output rows read
                band = ry[start:stop, lo:hi]
                torch.mm(band, rows[lo:hi], out=up[:r])
                chunk = probs[:r]  # r x K x W
                if via_softmax:
                    torch.ops.aten._softmax.out(up[:r].view(r, k, out_w), 1, False, out=chunk)
                    torch.gather(chunk, 1, index[image, start:stop], out=picked[image, start:stop])
                else:
                    torch.ops.aten._log_softmax.out(up[:r].view(r, k, out_w), 1, False, out=chunk)
                    torch.gather(chunk, 1, index[image, start:stop], out=picked[image, start:stop])
                    if need_grad:
                        chunk.exp_()
                if need_grad:  # softmax - onehot on valid pixels, sent back through the vertical pass
                    chunk.mul_(weight[image, start:stop])
                    chunk.scatter_add_(1, index[image, start:stop], minus_weight[image, start:stop])
                    grad_rows[lo:hi].addmm_(band.t(), chunk.view(r, -1))
            if need_grad:  # the horizontal pass transposed: h x K x w
                rows_grad = torch.ops.aten.upsample_linear1d_backward(
                    grad_rows.view(h, k, out_w), [out_w], [h, k, w], True
                )
                torch.mul(rows_grad.transpose(0, 1), keep[image, :, None, None], out=grad[image])
        if need_grad:
            ctx.save_for_backward(grad)
        log_p = picked.masked_fill(~valid[:, :, None, :], 1.0).log_() if via_softmax else picked * weight
        return -log_p.sum(dim=(1, 2, 3))  # B

    @staticmethod
    @once_differentiable  # analytic: a second derivative through it would be wrong, so it raises
    def backward(ctx, grad):  # noqa: D102
        (dz,) = ctx.saved_tensors
        return dz * grad[:, None, None, None], None, None, None, None


@functools.lru_cache(maxsize=32)
def interpolation_matrix(
    out_size: int, in_size: int, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, list[int], list[int]]:
    """``out_size x in_size`` matrix of 1-d linear interpolation with ``align_corners=True``, its indices and
    weights computed as torch's ``upsample_bilinear2d`` computes them (in ``dtype``), and, for each output
    position, its first and last source position. Built on the host from the sizes alone (no device
    read-back), then moved to ``device`` once per size, dtype and device (cached: a host-to-device copy
    of pageable memory would synchronise an accelerator's stream every step). Read-only."""
    scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
    src = torch.arange(out_size, dtype=dtype) * torch.tensor(scale, dtype=dtype)
    i0 = src.floor().clamp(max=in_size - 1)
    lam = (src - i0).clamp(0.0, 1.0)
    i0 = i0.long()
    i1 = (i0 + 1).clamp(max=in_size - 1)
    matrix = torch.zeros(out_size, in_size, dtype=dtype)
    rows = torch.arange(out_size)
    matrix.index_put_((rows, i0), 1.0 - lam, accumulate=True)
    matrix.index_put_((rows, i1), lam, accumulate=True)
    return matrix.to(device), i0.tolist(), i1.tolist()
