"""APDLoss on its kernels (segdistill.distill.apd_kernels) against the previous vectorised implementation,
kept here verbatim as a private reference: values and gradients (student features, student adapter,
teacher adapter), every term and scope, pools: float64 to 1e-9 relative, and float32 (both versions) to
3e-5 relative of the float64 result."""

import copy

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from segdistill.distill import APDLoss, apd_kernels
from segdistill.distill.apd import reference_terms
from segdistill.distill.apd_kernels import AdaptiveKL, NormPoolLogits, UpsampleCrossEntropy

# ----------------------------------------------------------------------------------------------------
# The previous implementation (APDLoss.forward before apd_kernels), self-contained.


class _OldAllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def _old_all_reduce_sum(x):
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return _OldAllReduceSum.apply(x)
    return x


def _old_group_sum(x, groups):
    b = x.shape[0]
    rows = -(-b // groups)
    if rows * groups != b:
        x = torch.cat([x, x.new_zeros((rows * groups - b, *x.shape[1:]))])
    return x.reshape(rows, groups, *x.shape[1:]).sum(dim=0)


def _old_per_image(x, b):
    groups = x.shape[0]
    return x.repeat(-(-b // groups), *([1] * (x.dim() - 1)))[:b]


def _old_one_hot(labels, num_classes, ignore_index, dtype):
    valid = (labels >= 0) & (labels < num_classes) & (labels != ignore_index)
    safe = torch.where(valid, labels, torch.zeros_like(labels))
    onehot = F.one_hot(safe, num_classes).permute(0, 3, 1, 2).to(dtype)
    return onehot * valid[:, None].to(dtype)


def _old_logits(features, prototypes, scale):
    b, _, h, w = features.shape
    return (scale * torch.matmul(prototypes, features.flatten(2))).view(b, -1, h, w)


def _old_kl_map(scale, s, p_s, z_t_raw, mask):
    z_s = _old_logits(s, p_s, scale).masked_fill(~mask, -1.0e4)
    z_t = z_t_raw.detach().masked_fill(~mask, -1.0e4)
    log_q = F.log_softmax(z_s, dim=1)
    log_p = F.log_softmax(z_t, dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)


def _old_mean_over(values, counted):
    counted = counted.to(values.dtype)
    return (values * counted).sum() / counted.sum().clamp(min=1.0)


def _old_terms(loss, student_feat, teacher_feat, labels):
    """APDLoss.forward as it was: autograd through F.normalize, matmuls and the full-resolution CE."""
    size = tuple(student_feat.shape[-2:])
    with torch.autocast(device_type=student_feat.device.type, enabled=False):
        dtype = torch.float64 if student_feat.dtype == torch.float64 else torch.float32
        f_s = student_feat.to(dtype)
        f_t = teacher_feat.detach().to(dtype)
        if tuple(f_t.shape[-2:]) != size:
            f_t = F.interpolate(f_t, size=size, mode="bilinear", align_corners=False)
        if loss.student_adapter is not None:
            f_s = loss.student_adapter(f_s)
            f_t = loss.teacher_adapter(f_t)
        s = F.normalize(f_s, dim=1).contiguous()
        t = F.normalize(f_t, dim=1).contiguous()
        grid_labels = labels
        if tuple(labels.shape[-2:]) != size:
            grid_labels = F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()
        onehot = _old_one_hot(grid_labels, loss.num_classes, loss.ignore_index, dtype)
        b, _, h, w = s.shape
        groups = None
        if loss.scope == "image":
            groups = b
        elif loss.scope == "batch" and loss.pool_size is not None and loss.pool_size < b:
            groups = -(-b // loss.pool_size)
        if groups is None:  # one pool: the whole batch (scope global: of every rank)
            sums_s = torch.bmm(onehot.flatten(2), s.flatten(2).transpose(1, 2)).sum(dim=0)
            sums_t = torch.bmm(onehot.flatten(2), t.flatten(2).transpose(1, 2)).sum(dim=0)
            counts = onehot.sum(dim=(2, 3)).sum(dim=0)
            if loss.scope == "global":
                sums_s, sums_t = _old_all_reduce_sum(sums_s), _old_all_reduce_sum(sums_t)
                counts = _old_all_reduce_sum(counts.detach())
            p_s, p_t, present = F.normalize(sums_s, dim=-1), F.normalize(sums_t, dim=-1), counts > 0
            present_f = present.to(dtype)
            mask = present[None, :, None, None]
            z_t_raw = _old_logits(t, p_t, loss.scale)
            kl_map = _old_kl_map(loss.scale, s, p_s, z_t_raw, mask)
            apd_kl = kl_map.sum() / (present_f.sum().clamp(min=1.0) * b * h * w)
            cos = (p_s * p_t.detach()).sum(dim=-1)
            apd_align = (0.5 * (1.0 - cos) * present_f).sum() / present_f.sum().clamp(min=1.0)
            z_up = F.interpolate(z_t_raw * mask.to(dtype), size=labels.shape[-2:], mode="bilinear", align_corners=True)
            ce = F.cross_entropy(z_up, labels, ignore_index=loss.ignore_index, reduction="sum")
            apd_teacher_ce = ce / (labels != loss.ignore_index).sum().clamp(min=1)
            return {"apd_kl": apd_kl, "apd_align": apd_align, "apd_teacher_ce": apd_teacher_ce}
        sums_s = torch.bmm(onehot.flatten(2), s.flatten(2).transpose(1, 2))
        sums_t = torch.bmm(onehot.flatten(2), t.flatten(2).transpose(1, 2))
        p_s = F.normalize(_old_group_sum(sums_s, groups), dim=-1)
        p_t = F.normalize(_old_group_sum(sums_t, groups), dim=-1)
        present = _old_group_sum(onehot.sum(dim=(2, 3)), groups) > 0
        mask = _old_per_image(present, b)[:, :, None, None]
        present_f = present.to(dtype)
        n_present = present_f.sum(dim=1)
        has_class = n_present > 0
        images = _old_group_sum(s.new_ones(b), groups)
        z_t_raw = _old_logits(t, _old_per_image(p_t, b), loss.scale)
        kl_map = _old_kl_map(loss.scale, s, _old_per_image(p_s, b), z_t_raw, mask)
        kl = _old_group_sum(kl_map.sum(dim=(1, 2)), groups) / (images * n_present.clamp(min=1.0) * (h * w))
        cos = (p_s * p_t.detach()).sum(dim=-1)
        align = (0.5 * (1.0 - cos) * present_f).sum(dim=1) / n_present.clamp(min=1.0)
        z_up = F.interpolate(z_t_raw * mask.to(dtype), size=labels.shape[-2:], mode="bilinear", align_corners=True)
        ce_map = F.cross_entropy(z_up, labels, ignore_index=loss.ignore_index, reduction="none")
        valid = _old_group_sum((labels != loss.ignore_index).sum(dim=(1, 2)).to(dtype), groups)
        ce = _old_group_sum(ce_map.sum(dim=(1, 2)), groups) / valid.clamp(min=1.0)
        return {
            "apd_kl": _old_mean_over(kl, has_class),
            "apd_align": _old_mean_over(align, has_class),
            "apd_teacher_ce": _old_mean_over(ce, valid > 0),
        }


# ----------------------------------------------------------------------------------------------------

# float32: the largest error of either version against float64 here is 9.0e-6 (Intel Xeon; the new one 8.96e-6,
# the previous one 8.49e-6), so 3e-5 leaves a margin for other CPUs' kernels; a wrong term is off by far more.
TOLERANCE = {torch.float64: 1e-9, torch.float32: 3e-5}
SCOPES = [("batch", None), ("batch", 2), ("batch", 3), ("image", None), ("global", None)]


def make_case(dtype, *, batch=5, channels=6, classes=5, size=(5, 4), teacher_size=(7, 6), label_size=(23, 17), seed=0):
    """Student ``batch x channels x size``, teacher on another grid, labels larger than the features and
    not a multiple of them, ~20 % ignored, classes that differ between images."""
    g = torch.Generator().manual_seed(seed)
    f_s = torch.randn(batch, channels, *size, generator=g, dtype=dtype)
    f_t = torch.randn(batch, channels, *teacher_size, generator=g, dtype=dtype)
    coarse = torch.randint(0, classes, (batch, 4, 3), generator=g)
    for i in range(batch):  # every image lacks one class
        coarse[i][coarse[i] == i % classes] = (i + 1) % classes
    target = F.interpolate(coarse[:, None].double(), size=label_size, mode="nearest")[:, 0].long()
    target[torch.rand(target.shape, generator=g) < 0.2] = 255
    return f_s, f_t, target


def terms_and_gradients(fn, loss, f_s, f_t, target):
    """Each term's value and its gradients with respect to the student features and every parameter of
    ``loss`` (``None`` where it does not reach)."""
    x = f_s.clone().requires_grad_(True)
    out = fn(loss, x, f_t, target)
    inputs = [x, *loss.parameters()]
    grads = {}
    for key, value in out.items():
        grads[key] = (
            torch.autograd.grad(value, inputs, retain_graph=True, allow_unused=True)
            if value.requires_grad
            else [None] * len(inputs)
        )
    return {k: v.detach() for k, v in out.items()}, grads


def assert_close_relative(actual, expected, rel, what):
    """Elementwise, within ``rel`` of the largest magnitude of ``expected``."""
    if expected is None:
        assert actual is None or torch.count_nonzero(actual) == 0, what
        return
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual.to(expected.dtype), expected, rtol=rel, atol=rel * max(scale, 1e-30), msg=what)


def compare(loss, f_s, f_t, target, rel, reference=_old_terms):
    """The new terms and gradients against ``reference``'s. In float64 the two must agree within ``rel``.
    In float32 the two orders of operations round differently, and by CPU (the same case differs by 1.1e-5
    of its largest gradient on one Intel Xeon, by less on an AMD EPYC, while both lie within 1e-5 of the
    exact value), so there both are compared with ``reference`` run in float64 on copies, and both must lie
    within ``rel`` of it: the new version is as accurate as the old one, whatever the CPU."""
    new_v, new_g = terms_and_gradients(lambda m, a, b, c: m(a, b, c), loss, f_s, f_t, target)
    old_v, old_g = terms_and_gradients(reference, loss, f_s, f_t, target)
    if f_s.dtype == torch.float64:
        checked = {"new": (new_v, new_g)}
        ref_v, ref_g = old_v, old_g
    else:
        checked = {"new": (new_v, new_g), "previous": (old_v, old_g)}
        ref_v, ref_g = terms_and_gradients(reference, copy.deepcopy(loss).double(), f_s.double(), f_t.double(), target)
    names = ["student features", *(n for n, _ in loss.named_parameters())]
    for which, (values, grads) in checked.items():
        for key in ref_v:
            assert values[key].dtype == f_s.dtype, (which, key)
            assert values[key].item() == pytest.approx(ref_v[key].item(), rel=rel, abs=1e-30), (which, key)
            for name, a, b in zip(names, grads[key], ref_g[key]):
                assert_close_relative(a, b, rel, f"{which}: d {key} / d {name}")
    return new_v, new_g


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("adapter", [False, True])
@pytest.mark.parametrize("scope, pool_size", SCOPES)
def test_values_and_gradients_equal_the_previous_implementation(dtype, adapter, scope, pool_size):
    """B=5 (indivisible by pools of 2 and 3), teacher features resized, labels larger than the features."""
    f_s, f_t, target = make_case(dtype, seed=7)
    torch.manual_seed(0)
    loss = APDLoss(5, 6, 6, adapter=adapter, adapter_channels=7, scope=scope, pool_size=pool_size).to(dtype)
    values, grads = compare(loss, f_s, f_t, target, TOLERANCE[dtype])
    assert all(v.item() > 0 for v in values.values())
    if adapter:  # each term reaches exactly what it trains
        teacher = [i + 1 for i, (n, _) in enumerate(loss.named_parameters()) if n.startswith("teacher_adapter")]
        for key in ("apd_kl", "apd_align"):
            assert all(grads[key][i] is None for i in teacher), key
        assert grads["apd_teacher_ce"][0] is None and all(grads["apd_teacher_ce"][i] is not None for i in teacher)


def test_the_benchmark_reference_is_the_previous_implementation():
    """``apd.reference_terms`` (what benchmarks/apd_loss.py times as "old") computes what the copy here does."""
    f_s, f_t, target = make_case(torch.float64, seed=3)
    for scope, pool_size in SCOPES:
        torch.manual_seed(0)
        loss = APDLoss(5, 6, 6, adapter_channels=7, scope=scope, pool_size=pool_size).double()
        compare(loss, f_s, f_t, target, 1e-12, reference=reference_terms)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("label_size", [(5, 4), (40, 32), (6, 9)])
def test_label_sizes(dtype, label_size):
    """Labels on the feature grid (identity interpolation), at 8x, and at another aspect ratio."""
    f_s, f_t, target = make_case(dtype, teacher_size=(5, 4), label_size=label_size, seed=2)
    torch.manual_seed(0)
    loss = APDLoss(5, 6, 6, adapter_channels=7, pool_size=2).to(dtype)
    compare(loss, f_s, f_t, target, TOLERANCE[dtype])


@pytest.mark.parametrize("scope, pool_size", SCOPES)
@pytest.mark.parametrize("adapter", [False, True])
def test_no_labelled_pixel_gives_zeros_and_finite_gradients(scope, pool_size, adapter):
    f_s, f_t, target = make_case(torch.float32)
    target[:] = 255
    torch.manual_seed(0)
    loss = APDLoss(5, 6, 6, adapter=adapter, adapter_channels=7, scope=scope, pool_size=pool_size)
    x = f_s.clone().requires_grad_(True)
    out = loss(x, f_t, target)
    assert all(value.item() == 0.0 for value in out.values())
    sum(out.values()).backward()
    assert torch.isfinite(x.grad).all() and all(torch.isfinite(p.grad).all() for p in loss.parameters())
    if adapter:  # still connected: under DDP its backward (and all-reduce) runs on every rank
        assert out["apd_teacher_ce"].requires_grad


def test_some_images_without_a_labelled_pixel():
    """Pools of 2 over B=5 ({0, 3}, {1, 4}, {2}) with images 1 and 4 all ignored, float64."""
    f_s, f_t, target = make_case(torch.float64, seed=5)
    target[[1, 4]] = 255
    torch.manual_seed(0)
    loss = APDLoss(5, 6, 6, adapter_channels=7, pool_size=2).double()
    compare(loss, f_s, f_t, target, 1e-9)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_many_small_chunks(dtype, monkeypatch):
    """Chunks of one output row (and a partial last chunk) give the same values and gradients."""
    monkeypatch.setattr(apd_kernels, "CHUNK_ELEMENTS", 1)
    monkeypatch.setattr(apd_kernels, "CHUNK_ELEMENTS_THREADS", 1)
    f_s, f_t, target = make_case(dtype, seed=4)
    torch.manual_seed(0)
    loss = APDLoss(5, 6, 6, adapter_channels=7).to(dtype)
    compare(loss, f_s, f_t, target, TOLERANCE[dtype])
    monkeypatch.setattr(apd_kernels, "CHUNK_ELEMENTS", 3 * 5 * 17)  # 3 rows of 23: a last chunk of 2
    monkeypatch.setattr(apd_kernels, "CHUNK_ELEMENTS_THREADS", 3 * 5 * 17)
    compare(loss, f_s, f_t, target, TOLERANCE[dtype])


def test_large_scale_takes_the_log_softmax_path():
    """A scale where a softmax probability could underflow in float32: the cross-entropy goes through a
    log-softmax, and still equals the reference."""
    f_s, f_t, target = make_case(torch.float32, seed=6)
    torch.manual_seed(0)
    loss = APDLoss(5, 6, 6, adapter_channels=7, scale=60.0)
    compare(loss, f_s, f_t, target, TOLERANCE[torch.float32])


def test_half_precision_inputs_compute_in_float32_and_float64_is_kept():
    """bf16 / fp16 features under autocast: float32 terms, finite gradients in the input's dtype, values
    close to float32's; a backward inside autocast too; float64 stays float64."""
    f_s, f_t, target = make_case(torch.float32, seed=8)
    torch.manual_seed(0)
    loss = APDLoss(5, 6, 6, adapter_channels=7, pool_size=2)
    reference = loss(f_s, f_t, target)
    for dtype in (torch.bfloat16, torch.float16):
        x = f_s.to(dtype).requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = loss(x, f_t.to(dtype), target)
            sum(out.values()).backward()
        assert all(v.dtype == torch.float32 for v in out.values())
        assert x.grad.dtype == dtype and torch.isfinite(x.grad.float()).all()
        for key in out:
            assert out[key].item() == pytest.approx(reference[key].item(), rel=5e-2, abs=1e-3), (dtype, key)
    out = APDLoss(5, 6, 6, adapter_channels=7, pool_size=2).double()(f_s.double(), f_t.double(), target)
    assert all(v.dtype == torch.float64 for v in out.values())


# ----------------------------------------------------------------------------------------------------
# The kernels alone: gradcheck in float64 (first order, undefined output gradients included).


def test_gradcheck_norm_pool_logits():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(3, 4, 3, 2, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 3, (3, 6), generator=g)
    labels[0, 0] = 255
    onehot = apd_kernels.class_mask(labels.view(3, 3, 2), 4, 255, torch.float64)  # class 3 absent
    for groups in (1, 2, 3):
        assert torch.autograd.gradcheck(
            lambda x, groups=groups: NormPoolLogits.apply(x, onehot, groups, 10.0, False), (f,)
        )
    zero = f.detach().clone()
    zero[1, :, 0, 0] = 0.0  # a zero feature vector: normalised to 0 as F.normalize does
    out = NormPoolLogits.apply(zero, onehot, 1, 10.0, False)
    assert torch.isfinite(out[0]).all() and torch.isfinite(out[1]).all()


def test_gradcheck_adaptive_kl_and_upsample_cross_entropy():
    g = torch.Generator().manual_seed(1)
    z_s = torch.randn(2, 4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    z_t = torch.randn(2, 4, 6, generator=g, dtype=torch.float64)
    keep = torch.tensor([[True, True, False, True], [True, False, True, True]])
    assert torch.autograd.gradcheck(lambda x: AdaptiveKL.apply(x, z_t, keep), (z_s,))
    z = torch.randn(2, 4, 3, 2, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 4, (2, 7, 5), generator=g)
    labels[0, :2] = 255
    assert torch.autograd.gradcheck(lambda x: UpsampleCrossEntropy.apply(x, keep.double(), labels, 255, 10.0), (z,))
    assert torch.autograd.gradcheck(lambda x: UpsampleCrossEntropy.apply(x, keep.double(), labels, 255, 1e4), (z,))


# ----------------------------------------------------------------------------------------------------
# Scope global over two gloo ranks, one of them without a labelled pixel.


def _global_worker(rank: int, world: int, init_file: str, queue) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    f_s, f_t, target = make_case(torch.float64, batch=4, seed=9)
    target[2:] = 255  # rank 1's half: no labelled pixel
    half = slice(2 * rank, 2 * rank + 2)
    results = []
    for fn in (lambda m, a, b, c: m(a, b, c), _old_terms):
        torch.manual_seed(0)
        loss = APDLoss(5, 6, 6, adapter_channels=7, scope="global").double()
        x = f_s[half].clone().requires_grad_(True)
        out = fn(loss, x, f_t[half], target[half])
        (out["apd_kl"] + out["apd_align"]).backward()
        out["apd_teacher_ce"].backward()  # every rank, 0 or not: its backward all-reduces
        grads = [x.grad.numpy().copy(), *(p.grad.numpy().copy() for p in loss.parameters())]
        results.append(({k: v.item() for k, v in out.items()}, grads))
    queue.put((rank, results))
    dist.destroy_process_group()


def test_global_scope_over_two_ranks_with_an_empty_rank(tmp_path):
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_global_worker, args=(r, 2, str(tmp_path / "init"), queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=180) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    for rank in (0, 1):
        (new_values, new_grads), (old_values, old_grads) = results[rank]
        for key in old_values:
            assert new_values[key] == pytest.approx(old_values[key], rel=1e-9, abs=1e-15), (rank, key)
        for a, b in zip(new_grads, old_grads):
            assert_close_relative(torch.from_numpy(a), torch.from_numpy(b), 1e-9, f"rank {rank}")
    assert results[1][0][0]["apd_teacher_ce"] == 0.0 and results[1][0][0]["apd_kl"] > 0


def test_a_second_derivative_through_the_kernels_raises():
    """The backwards are analytic (once_differentiable): create_graph through them is an error, never a
    silently wrong second derivative."""
    f_s, f_t, target = make_case(torch.float64, seed=5)
    loss = APDLoss(5, 6, 6, adapter=False).double()
    x = f_s.clone().requires_grad_()
    (g,) = torch.autograd.grad(loss(x, f_t, target)["apd_kl"], x, create_graph=True)
    with pytest.raises(RuntimeError, match="does not require grad"):  # once_differentiable: no graph to go on
        torch.autograd.grad((g * g).sum(), x)
