"""APDLoss against an independent per-class loop (the release's formulation), gradcheck, scopes, pools."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from segdistill import UserError
from segdistill.cli import main
from segdistill.distill import APDLoss


def reference_apd(f_s, f_t, target, num_classes, scale=10.0, ignore=255):
    """The release's formulation written as a plain per-class loop (adapters off, batch scope)."""
    h, w = f_s.shape[-2:]
    labels = F.interpolate(target[:, None].float(), size=(h, w), mode="nearest")[:, 0].long()
    s = F.normalize(f_s, dim=1)
    t = F.normalize(f_t, dim=1)
    protos_s, protos_t, present = [], [], []
    for c in range(num_classes):
        m = labels == c
        if m.sum() == 0:
            continue
        present.append(c)
        protos_s.append(F.normalize(s.permute(0, 2, 3, 1)[m].mean(0), dim=0))
        protos_t.append(F.normalize(t.permute(0, 2, 3, 1)[m].mean(0), dim=0))
    if not present:
        zero = f_s.sum() * 0
        return zero, zero, zero
    p_s = torch.stack(protos_s)  # N x C
    p_t = torch.stack(protos_t)
    z_s = scale * torch.einsum("bchw,nc->bnhw", s, p_s)
    z_t = scale * torch.einsum("bchw,nc->bnhw", t, p_t)
    kl = torch.nn.KLDivLoss(reduction="mean")(F.log_softmax(z_s, 1), F.softmax(z_t, 1))
    align = torch.stack([0.5 * (1 - torch.dot(p_s[i], p_t[i])) for i in range(len(present))]).mean()
    full = torch.zeros(f_t.shape[0], num_classes, h, w, dtype=f_t.dtype)
    for i, c in enumerate(present):
        full[:, c] = z_t[:, i]
    up = F.interpolate(full, size=target.shape[-2:], mode="bilinear", align_corners=True)
    ce = F.cross_entropy(up, target, ignore_index=ignore)
    return kl, align, ce


CASES = [  # B, C, h, w, K, label scale, ignore fraction, classes actually used
    (2, 8, 5, 6, 4, 8, 0.0, 4),
    (3, 16, 7, 9, 6, 4, 0.2, 3),  # absent classes
    (1, 4, 4, 4, 19, 8, 0.5, 19),
    (4, 12, 6, 5, 10, 2, 0.3, 2),
]


@pytest.mark.parametrize("B, C, h, w, K, up, ignore_frac, used", CASES)
def test_parity_with_per_class_loop(B, C, h, w, K, up, ignore_frac, used):
    g = torch.Generator().manual_seed(B * 100 + C)
    f_s = torch.randn(B, C, h, w, generator=g)
    f_t = torch.randn(B, C, h, w, generator=g)
    target = torch.randint(0, used, (B, h * up, w * up), generator=g)
    target[torch.rand(target.shape, generator=g) < ignore_frac] = 255
    loss = APDLoss(K, C, C, adapter=False)
    out = loss(f_s, f_t, target)
    kl, align, ce = reference_apd(f_s, f_t, target, K)
    assert out["apd_kl"].item() == pytest.approx(kl.item(), rel=1e-5, abs=1e-7)
    assert out["apd_align"].item() == pytest.approx(align.item(), rel=1e-5, abs=1e-7)
    assert out["apd_teacher_ce"].item() == pytest.approx(ce.item(), rel=1e-5, abs=1e-7)


def test_gradients_match_the_reference():
    g = torch.Generator().manual_seed(0)
    f_s = torch.randn(2, 8, 5, 5, generator=g, requires_grad=True)
    f_t = torch.randn(2, 8, 5, 5, generator=g)
    target = torch.randint(0, 3, (2, 20, 20), generator=g)
    out = APDLoss(5, 8, 8, adapter=False)(f_s, f_t, target)
    (grad,) = torch.autograd.grad(out["apd_kl"] + out["apd_align"], f_s)
    f_s2 = f_s.detach().clone().requires_grad_(True)
    kl, align, _ = reference_apd(f_s2, f_t, target, 5)
    (ref,) = torch.autograd.grad(kl + align, f_s2)
    assert torch.allclose(grad, ref, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("scope, pool_size", [("batch", None), ("image", None), ("batch", 2)])
def test_gradcheck_float64(scope, pool_size):
    g = torch.Generator().manual_seed(1)
    f_s = torch.randn(3, 4, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    f_t = torch.randn(3, 4, 3, 3, generator=g, dtype=torch.float64)
    target = torch.randint(0, 3, (3, 6, 6), generator=g)
    target[0, 0, 0] = 255
    loss = APDLoss(3, 4, 4, adapter=False, scope=scope, pool_size=pool_size)  # pool_size 2: pools of 2 and 1
    assert torch.autograd.gradcheck(lambda x: tuple(loss(x, f_t, target)[k] for k in ("apd_kl", "apd_align")), (f_s,))

    # the teacher-side CE trains the teacher adapter: check its gradient w.r.t. the adapter weights
    torch.manual_seed(0)
    with_adapter = APDLoss(3, 4, 4, adapter=True, adapter_channels=3, scope=scope, pool_size=pool_size).double()
    names = [f"teacher_adapter.{n}" for n, _ in with_adapter.teacher_adapter.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for p in with_adapter.teacher_adapter.parameters())

    def teacher_ce(*weights):
        out = torch.func.functional_call(with_adapter, dict(zip(names, weights)), (f_s.detach(), f_t, target))
        return out["apd_teacher_ce"]

    assert torch.autograd.gradcheck(teacher_ce, params)


def test_teacher_adapter_is_trained_only_by_teacher_ce():
    torch.manual_seed(0)
    loss = APDLoss(4, 6, 10, adapter=True, adapter_channels=8)
    f_s = torch.randn(2, 6, 4, 4, requires_grad=True)
    f_t = torch.randn(2, 10, 4, 4, requires_grad=True)
    target = torch.randint(0, 4, (2, 32, 32))
    out = loss(f_s, f_t, target)
    (out["apd_kl"] + out["apd_align"]).backward(retain_graph=True)
    assert all(p.grad is None for p in loss.teacher_adapter.parameters())
    assert all(p.grad is not None for p in loss.student_adapter.parameters())
    assert f_t.grad is None and f_s.grad is not None
    for p in loss.student_adapter.parameters():
        p.grad = None
    out["apd_teacher_ce"].backward()
    assert all(p.grad is not None for p in loss.teacher_adapter.parameters())
    assert all(p.grad is None for p in loss.student_adapter.parameters())
    assert f_t.grad is None
    ((_, module, opt),) = loss.own_optimizers()
    assert module is loss.teacher_adapter and isinstance(opt, torch.optim.Adam)
    assert opt.param_groups[0]["lr"] == 1e-5 and opt.param_groups[0]["betas"] == (0.9, 0.99)
    assert {id(p) for p in loss.student_parameters()} == {id(p) for p in loss.student_adapter.parameters()}


def test_identical_features_give_zero_student_terms():
    f = torch.randn(2, 5, 4, 4)
    target = torch.randint(0, 3, (2, 8, 8))
    out = APDLoss(3, 5, 5, adapter=False)(f, f.clone(), target)
    assert out["apd_kl"].item() == pytest.approx(0.0, abs=1e-6)
    assert out["apd_align"].item() == pytest.approx(0.0, abs=1e-6)


def hand_case():
    """Two images of 1 x 2 pixels with 2-d features; image 0 is all class 0, image 1 is class 0 | class 1."""
    f_s = torch.tensor([[[[1.0, 1.0]], [[0.0, 0.0]]], [[[0.0, 1.0]], [[1.0, 0.0]]]])  # B=2, C=2, h=1, w=2
    target = torch.tensor([[[0, 0]], [[0, 1]]])
    return f_s, target


def test_scopes_on_a_case_known_by_hand():
    f_s, target = hand_case()
    f_t = f_s.clone()
    f_t[1] = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])  # teacher: image 1 swaps the two pixels' features
    # Batch scope: class 0 pixels (s) = (1,0),(1,0),(0,1) -> p_s[0] = normalize(2,1); class 1: (1,0).
    # teacher class 0 pixels = (1,0),(1,0),(1,0) -> p_t[0] = (1,0); class 1: (0,1).
    batch = APDLoss(2, 2, 2, adapter=False, scope="batch")(f_s, f_t, target)
    p_s0 = torch.tensor([2.0, 1.0]) / 5**0.5
    expected_align = 0.5 * ((1 - p_s0[0]) + (1 - 0.0)) / 2
    assert batch["apd_align"].item() == pytest.approx(expected_align.item(), rel=1e-6)
    # Image scope (a pool of one image each, terms averaged over images): image 0 has only class 0 with
    # identical prototypes (1,0) on both sides -> 0; image 1 class 0: s (0,1) vs t (1,0) -> cos 0;
    # class 1: s (1,0) vs t (0,1) -> cos 0 -> its mean 0.5.
    image = APDLoss(2, 2, 2, adapter=False, scope="image")(f_s, f_t, target)
    assert image["apd_align"].item() == pytest.approx((0 + (0.5 + 0.5) / 2) / 2, rel=1e-6)
    # Image 0 has one present class: its KL is 0 (a softmax over one class). Image 1: per pixel,
    # teacher logits (10, 0) and (0, 10); student logits (10, 0)->pixel0 s=(0,1): (10*0+... ) computed below.
    s1 = torch.tensor([[0.0, 1.0], [1.0, 0.0]])  # pixel features of image 1 (student)
    t1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z_s = 10 * s1 @ s1.T  # prototypes of image 1 equal its pixels (one pixel per class)
    z_t = 10 * t1 @ t1.T
    kl_pix = (F.softmax(z_t, 1) * (F.log_softmax(z_t, 1) - F.log_softmax(z_s, 1))).sum(1)
    expected_kl = (0.0 + kl_pix.sum().item() / (2 * 2)) / 2  # mean over images of sum / (N_b * h * w)
    assert image["apd_kl"].item() == pytest.approx(expected_kl, rel=1e-5)


def test_global_scope_equals_batch_scope_in_one_process():
    f_s, target = hand_case()
    f_t = torch.randn_like(f_s)
    a = APDLoss(2, 2, 2, adapter=False, scope="batch")(f_s, f_t, target)
    b = APDLoss(2, 2, 2, adapter=False, scope="global")(f_s, f_t, target)
    for key in a:
        assert a[key].item() == pytest.approx(b[key].item(), rel=1e-6)


def test_bad_arguments():
    with pytest.raises(UserError, match="equal feature channels"):
        APDLoss(19, 128, 512, adapter=False)
    with pytest.raises(UserError, match="scope"):
        APDLoss(19, 8, 8, scope="dataset")
    with pytest.raises(UserError, match="pool_size must be a positive number"):
        APDLoss(19, 8, 8, pool_size=0)
    for scope in ("image", "global"):
        with pytest.raises(UserError, match="pool_size applies to scope batch only"):
            APDLoss(19, 8, 8, scope=scope, pool_size=2)
    loss = APDLoss(3, 8, 16)
    with pytest.raises(UserError, match="student feature channels"):
        loss(torch.randn(1, 4, 2, 2), torch.randn(1, 16, 2, 2), torch.zeros(1, 8, 8, dtype=torch.long))


def test_teacher_features_on_another_grid_are_resized():
    loss = APDLoss(3, 8, 8, adapter=False)
    out = loss(torch.randn(2, 8, 6, 6), torch.randn(2, 8, 12, 12), torch.randint(0, 3, (2, 48, 48)))
    assert all(torch.isfinite(v) for v in out.values())


def test_bf16_autocast_computes_in_float32():
    f_s = torch.randn(2, 8, 4, 4)
    f_t = torch.randn(2, 8, 4, 4)
    target = torch.randint(0, 3, (2, 16, 16))
    loss = APDLoss(3, 8, 8, adapter=False)
    ref = loss(f_s, f_t, target)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = loss(f_s.bfloat16(), f_t.bfloat16(), target)
    assert all(v.dtype == torch.float32 for v in out.values())
    assert out["apd_kl"].item() == pytest.approx(ref["apd_kl"].item(), rel=5e-2, abs=1e-3)


def test_image_scope_ignores_images_without_a_valid_pixel():
    g = torch.Generator().manual_seed(3)
    f_s = torch.randn(2, 6, 4, 4, generator=g)
    f_t = torch.randn(2, 6, 4, 4, generator=g)
    target = torch.randint(0, 3, (2, 16, 16), generator=g)
    target[1] = 255  # image 1 has no valid pixel
    loss = APDLoss(3, 6, 6, adapter=False, scope="image")
    both = loss(f_s, f_t, target)
    alone = loss(f_s[:1], f_t[:1], target[:1])
    for key in ("apd_kl", "apd_align", "apd_teacher_ce"):
        assert both[key].item() == pytest.approx(alone[key].item(), rel=1e-6), key


# ----------------------------------------------------------------------------------------------------
# Pools of pool_size images (issue 19): the release pools per GPU (Cityscapes: 8 images on 4 GPUs, 2 per
# pool) and DDP averages the GPUs' gradients; pool g of G = ceil(B / pool_size) holds images g, g + G, ...


def pooled_reference(f_s, f_t, target, num_classes, pool_size):
    """The per-class loop reference applied pool by pool (images ``g::G``) and averaged over the pools."""
    groups = -(-f_s.shape[0] // pool_size)
    terms = [reference_apd(f_s[g::groups], f_t[g::groups], target[g::groups], num_classes) for g in range(groups)]
    return tuple(torch.stack(values).mean() for values in zip(*terms))


def pool_inputs(batch: int, seed: int = 0, channels: int = 6, classes: int = 5):
    """float64 features ``batch x 6 x 5 x 4`` and labels ``batch x 20 x 16`` with ~20 % ignored pixels and
    classes that differ between images (so the pools differ in N)."""
    g = torch.Generator().manual_seed(seed)
    f_s = torch.randn(batch, channels, 5, 4, generator=g, dtype=torch.float64)
    f_t = torch.randn(batch, channels, 5, 4, generator=g, dtype=torch.float64)
    coarse = torch.randint(0, classes, (batch, 5, 4), generator=g)
    target = F.interpolate(coarse[:, None].double(), size=(20, 16), mode="nearest")[:, 0].long()
    target[torch.rand(target.shape, generator=g) < 0.2] = 255
    return f_s, f_t, target


@pytest.mark.parametrize(
    "batch, pool_size",
    [(4, 1), (4, 2), (4, 4), (4, None), (4, 6), (5, 2), (7, 3), (6, 4)],  # (5, 2): pools of 2, 2, 1
)
def test_pools_equal_the_loop_reference_pool_by_pool(batch, pool_size):
    """Values (float64, 1e-9) and student-feature gradients equal the per-class loop applied to each pool
    and averaged over the pools; pool_size 1 is scope image, pool_size unset or >= B the whole batch."""
    f_s, f_t, target = pool_inputs(batch, seed=batch * 10 + (pool_size or 0))
    x = f_s.clone().requires_grad_(True)
    out = APDLoss(5, 6, 6, adapter=False, pool_size=pool_size)(x, f_t, target)
    (grad,) = torch.autograd.grad(out["apd_kl"] + out["apd_align"], x)
    x_ref = f_s.clone().requires_grad_(True)
    kl, align, ce = pooled_reference(x_ref, f_t, target, 5, min(pool_size or batch, batch))
    (grad_ref,) = torch.autograd.grad(kl + align, x_ref)
    for key, ref in (("apd_kl", kl), ("apd_align", align), ("apd_teacher_ce", ce)):
        assert out[key].item() == pytest.approx(ref.item(), rel=1e-9, abs=1e-12), key
    assert torch.allclose(grad, grad_ref, rtol=1e-9, atol=1e-12)
    if pool_size == 1:
        image = APDLoss(5, 6, 6, adapter=False, scope="image")(f_s, f_t, target)
        assert all(torch.equal(image[k], out[k].detach()) for k in out)


def test_one_process_pools_what_the_ranks_of_the_sampler_pool():
    """Batch 8 in pools of 2 equals 4 ranks with images r, r + 4 each (the sampler's shard, pools of the
    whole per-rank batch) and 2 ranks with images r, r + 2, ... in pools of 2: values averaged over ranks
    and gradients (features and both adapters) averaged as DDP averages them, float64."""
    f_s, f_t, target = pool_inputs(8, seed=5)
    torch.manual_seed(0)
    loss = APDLoss(5, 6, 6, adapter_channels=7, pool_size=2).double()

    def run(world: int) -> tuple[dict[str, float], list[torch.Tensor]]:
        loss.zero_grad(set_to_none=True)
        x = f_s.clone().requires_grad_(True)
        values = {k: 0.0 for k in loss.terms}
        for rank in range(world):
            shard = slice(rank, None, world)
            out = loss(x[shard], f_t[shard], target[shard])
            ((out["apd_kl"] + out["apd_align"] + out["apd_teacher_ce"]) / world).backward()
            for key in values:
                values[key] += out[key].item() / world
        return values, [x.grad, *(p.grad.clone() for p in loss.parameters())]

    one, one_grads = run(1)
    for world in (2, 4):
        values, grads = run(world)
        for key in one:
            assert values[key] == pytest.approx(one[key], rel=1e-9), (world, key)
        for a, b in zip(grads, one_grads):
            assert torch.allclose(a, b, rtol=1e-9, atol=1e-12), world
    whole = {k: v.item() for k, v in APDLoss(5, 6, 6, adapter=False)(f_s, f_t, target).items()}
    pooled = {k: v.item() for k, v in APDLoss(5, 6, 6, adapter=False, pool_size=2)(f_s, f_t, target).items()}
    assert abs(whole["apd_kl"] - pooled["apd_kl"]) > 1e-3 * whole["apd_kl"]  # the pooling matters


def test_a_pool_without_a_labelled_pixel_contributes_nothing():
    """Batch 6 in pools of 2 ({0, 3}, {1, 4}, {2, 5}) where images 1 and 4 are all ignored: every term
    equals the batch without them ({0, 3}, {2, 5}), their features get a zero gradient, every gradient is
    finite (adapters on, float64)."""
    f_s, f_t, target = pool_inputs(6, seed=11)
    target[[1, 4]] = 255
    torch.manual_seed(0)
    loss = APDLoss(5, 6, 6, adapter_channels=7, pool_size=2).double()
    x = f_s.clone().requires_grad_(True)
    out = loss(x, f_t, target)
    sum(out.values()).backward()
    kept = [0, 2, 3, 5]
    y = f_s[kept].clone().requires_grad_(True)
    ref = loss(y, f_t[kept], target[kept])
    for key in out:
        assert out[key].item() == pytest.approx(ref[key].item(), rel=1e-12), key
    assert all(torch.isfinite(p.grad).all() for p in loss.parameters()) and torch.isfinite(x.grad).all()
    assert torch.equal(x.grad[[1, 4]], torch.zeros_like(x.grad[[1, 4]]))
    (grad_ref,) = torch.autograd.grad(sum(ref.values()), y)
    assert torch.allclose(x.grad[kept], grad_ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("scope, pool_size", [("batch", None), ("batch", 2), ("image", None)])
def test_no_labelled_pixel_anywhere_gives_zeros_and_finite_gradients(scope, pool_size):
    loss = APDLoss(3, 4, 4, scope=scope, pool_size=pool_size)
    f_s = torch.randn(3, 4, 3, 3, requires_grad=True)
    out = loss(f_s, torch.randn(3, 4, 3, 3), torch.full((3, 24, 24), 255))
    assert all(value.item() == 0.0 for value in out.values())
    sum(out.values()).backward()
    assert torch.isfinite(f_s.grad).all() and all(torch.isfinite(p.grad).all() for p in loss.parameters())


RECIPES = Path(__file__).resolve().parents[1] / "configs"


def test_pool_size_is_read_checked_and_passed_to_the_loss(capsys):
    from segdistill.config import load_config
    from segdistill.distill.methods import MethodContext, build_methods

    ctx = MethodContext(num_classes=19, student_channels={"feat": 8}, teacher_channels={"feat": 8})
    for overrides, expected in (([], None), (["distill.options.apd.pool_size=2"], 2)):
        config = load_config(RECIPES / "synthetic" / "apd.yaml", overrides)
        losses, _ = build_methods(config.distill.methods, ctx, config.distill.options, config.distill.weights)
        assert losses["apd"].pool_size == expected and losses["apd"].scope == "batch"
    for bad in (["scope=image", "pool_size=2"], ["scope=global", "pool_size=1"], ["pool_size=0"], ["pool_size=-2"]):
        args = [f"distill.options.apd.{x}" for x in bad]
        assert main(["distill", str(RECIPES / "synthetic" / "apd.yaml"), *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: config key 'distill.options.apd.pool_size'"), err


@pytest.mark.parametrize(
    "recipe, pool_size, total", [("cityscapes", 2, 8), ("ade20k", 2, 8), ("pascal_context", 3, 12)]
)
def test_release_recipes_pool_per_gpu_on_any_number_of_processes(recipe, pool_size, total):
    """The release's images per GPU (METHODS.md: batch 8, 8 and 12 over 4 GPUs); the recipe's batch is the
    release's total, and each process count that divides it into whole pools keeps the same 4 pools."""
    from segdistill.config import load_config

    config = load_config(RECIPES / recipe / "apd.yaml")
    assert config.distill.options["apd"]["pool_size"] == pool_size and config.data.batch_size == total
    for processes in (1, 2, 4):
        per_process = total // processes
        assert per_process % pool_size == 0 and processes * per_process // pool_size == 4


def _global_scope_worker(rank: int, world: int, init_file: str, queue) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    g = torch.Generator().manual_seed(7)
    f_s = torch.randn(4, 6, 5, 5, generator=g, dtype=torch.float64)
    f_t = torch.randn(4, 6, 5, 5, generator=g, dtype=torch.float64)
    target = torch.randint(0, 4, (4, 20, 20), generator=g)
    half = slice(2 * rank, 2 * rank + 2)  # each rank sees half of the batch
    x = f_s[half].clone().requires_grad_(True)
    out = APDLoss(4, 6, 6, adapter=False, scope="global")(x, f_t[half], target[half])
    (out["apd_kl"] + out["apd_align"]).backward()
    # numpy, pickled by value: a tensor would travel through shared memory, which the receiver may
    # open only after this process has exited (EOFError)
    queue.put((rank, {k: v.item() for k, v in out.items()}, x.grad.numpy().copy()))
    dist.destroy_process_group()


def test_global_scope_over_two_gloo_ranks_equals_batch_scope(tmp_path):
    """Two ranks with half a batch each: prototypes pooled across ranks give, averaged over ranks as
    DDP averages gradients, the batch-scope values and gradients of the whole batch."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_global_scope_worker, args=(r, 2, str(tmp_path / "init"), queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict((rank, (values, grad)) for rank, values, grad in (queue.get(timeout=120) for _ in procs))
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    g = torch.Generator().manual_seed(7)
    f_s = torch.randn(4, 6, 5, 5, generator=g, dtype=torch.float64).requires_grad_(True)
    f_t = torch.randn(4, 6, 5, 5, generator=g, dtype=torch.float64)
    target = torch.randint(0, 4, (4, 20, 20), generator=g)
    ref = APDLoss(4, 6, 6, adapter=False, scope="batch")(f_s, f_t, target)
    (ref["apd_kl"] + ref["apd_align"]).backward()
    for key in ("apd_kl", "apd_align", "apd_teacher_ce"):  # no ignored pixel: equal pixel counts per rank
        mean = (results[0][0][key] + results[1][0][key]) / 2
        assert mean == pytest.approx(ref[key].item(), rel=1e-9), key
    # DDP averages the ranks' gradients: each rank's gradient of its own half, divided by 2.
    grad = torch.cat([torch.from_numpy(results[0][1]), torch.from_numpy(results[1][1])]) / 2
    assert torch.allclose(grad, f_s.grad, rtol=1e-9, atol=1e-12)


def test_batch_scope_kl_and_teacher_ce_known_by_hand():
    """The hand case in batch scope, every term written out with plain math (no torch softmax)."""
    import math

    f_s, target = hand_case()
    f_s = f_s.double()  # float64: the teacher CE here is ~5e-5, below float32's relative resolution of log(1 - x)
    f_t = f_s.clone()
    f_t[1] = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    out = APDLoss(2, 2, 2, adapter=False, scope="batch")(f_s, f_t, target)
    r5 = math.sqrt(5.0)
    p_s = [(2 / r5, 1 / r5), (1.0, 0.0)]  # student prototypes of classes 0 and 1
    p_t = [(1.0, 0.0), (0.0, 1.0)]
    s_pix = [(1.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 0.0)]  # pixels in (image, position) order
    t_pix = [(1.0, 0.0), (1.0, 0.0), (1.0, 0.0), (0.0, 1.0)]
    labels = [0, 0, 0, 1]

    def softmax(z):
        m = max(z)
        e = [math.exp(v - m) for v in z]
        return [v / sum(e) for v in e]

    def dot(a, b):
        return a[0] * b[0] + a[1] * b[1]

    kl_sum, ce_sum = 0.0, 0.0
    for s, t, y in zip(s_pix, t_pix, labels):
        q = softmax([10 * dot(s, p) for p in p_s])
        p = softmax([10 * dot(t, c) for c in p_t])
        kl_sum += sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))
        ce_sum += -math.log(p[y])
    assert out["apd_kl"].item() == pytest.approx(kl_sum / (2 * 2 * 2), rel=1e-5)  # / (N * B * h * w)
    assert out["apd_teacher_ce"].item() == pytest.approx(ce_sum / 4, rel=1e-5)  # mean over 4 valid pixels


@pytest.mark.parametrize("scope", ["batch", "image"])
def test_channels_last_features_give_the_same_values_and_gradients(scope):
    """Features from a channels_last model (the recipes' memory format) go through the same maths."""
    torch.manual_seed(0)
    loss = APDLoss(5, 6, 8, adapter_channels=12, scope=scope)
    f_s = torch.randn(2, 6, 4, 5)
    f_t = torch.randn(2, 8, 4, 5)
    target = torch.randint(0, 5, (2, 16, 20))
    results = []
    for memory_format in (torch.contiguous_format, torch.channels_last):
        s = f_s.clone().contiguous(memory_format=memory_format).requires_grad_()
        out = loss(s, f_t.contiguous(memory_format=memory_format), target)
        (out["apd_kl"] + out["apd_align"]).backward()
        results.append(({k: v.detach() for k, v in out.items()}, s.grad.clone()))
    (a, grad_a), (b, grad_b) = results
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_a, grad_b, rtol=1e-5, atol=1e-6)
