"""APDLoss (kernels of segdistill.distill.apd_kernels) against the previous vectorised implementation
(``segdistill.distill.apd.reference_terms``) and a straightforward per-class loop of the same formula.

Times forward + backward of every term (student KL and alignment into the student features and the
student adapter; the full-resolution teacher-side cross-entropy into the teacher adapter), the three
implementations interleaved in one run, with the release's adapters and with the adapter convolutions
removed; prints the speed-ups, the largest relative differences of the values and gradients, the
machine's memory bandwidth and each time as a multiple of its memory floor.

    python benchmarks/apd_loss.py              # the three shapes of the issue
    python benchmarks/apd_loss.py --quick      # small shapes, a smoke test
    python benchmarks/apd_loss.py --profile    # + passes over a feature map, old and new (torch.profiler)
    python benchmarks/apd_loss.py --threads 1  # torch's intra-op threads (default: torch's own)
    python benchmarks/apd_loss.py --pools      # instead: one pool vs pools of 2 (pool_size) vs scope image
                                               # at the one-process release batches (Cityscapes, ADE20K)

Memory floor of a shape: the bytes the loss must at least move, ``4 * (3 * B*C*h*w) + 8 * B*H*W``
(float32 features): read the student and the teacher feature maps, write the student features'
gradient, read the int64 labels (the adapters' parameters and gradients are negligible). Divided by the
bandwidth measured here (the better of a large copy and a large add), it is the time no implementation
can beat; the adapters' convolutions are compute-bound, so the rows with adapters sit far above it.

On a machine whose cores are oversubscribed (load average above the core count), torch's OpenMP threads
spin-wait at every parallel operator and each one can cost a scheduler slice (milliseconds): the new
loss, with more and smaller operators (chunks of the full-resolution cross-entropy), suffers far more
than the old. The script prints the load; compare with ``--threads 1`` or with
``OMP_WAIT_POLICY=PASSIVE`` in the environment there.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import time

import torch
import torch.nn.functional as F

from segdistill.distill import APDLoss
from segdistill.distill.apd import reference_terms
from segdistill.distill.apd_kernels import UpsampleCrossEntropy


def loop_apd(loss: APDLoss, f_s: torch.Tensor, f_t: torch.Tensor, target: torch.Tensor) -> dict:
    """The formula as a per-class Python loop (what a direct transcription of the release does,
    without its unused n x n matrix), sharing ``loss``'s adapters."""
    h, w = f_s.shape[-2:]
    s = F.normalize(loss.student_adapter(f_s), dim=1)
    t = F.normalize(loss.teacher_adapter(f_t.detach()), dim=1)
    labels = F.interpolate(target[:, None].float(), size=(h, w), mode="nearest")[:, 0].long()
    s_pix = s.permute(0, 2, 3, 1)
    t_pix = t.permute(0, 2, 3, 1)
    classes, p_s, p_t = [], [], []
    for c in range(loss.num_classes):
        mask = labels == c
        if not mask.any():
            continue
        classes.append(c)
        p_s.append(F.normalize(s_pix[mask].mean(0), dim=0))
        p_t.append(F.normalize(t_pix[mask].mean(0), dim=0))
    if not classes:
        zero = f_s.sum() * 0
        return {"apd_kl": zero, "apd_align": zero, "apd_teacher_ce": zero}
    ps, pt = torch.stack(p_s), torch.stack(p_t)
    z_s = loss.scale * torch.einsum("bchw,nc->bnhw", s, ps)
    z_t = loss.scale * torch.einsum("bchw,nc->bnhw", t, pt)
    kl = F.kl_div(F.log_softmax(z_s, 1), F.softmax(z_t.detach(), 1), reduction="sum") / z_s.numel()
    align = (0.5 * (1 - (ps * pt.detach()).sum(1))).mean()
    full = z_t.new_zeros(z_t.shape[0], loss.num_classes, h, w)
    for i, c in enumerate(classes):
        full[:, c] = z_t[:, i]
    up = F.interpolate(full, size=target.shape[-2:], mode="bilinear", align_corners=True)
    ce = F.cross_entropy(up, target, ignore_index=loss.ignore_index)
    return {"apd_kl": kl, "apd_align": align, "apd_teacher_ce": ce}


def new_apd(loss: APDLoss, f_s: torch.Tensor, f_t: torch.Tensor, target: torch.Tensor) -> dict:
    return loss(f_s, f_t, target)


IMPLEMENTATIONS = {"loop": loop_apd, "old": reference_terms, "new": new_apd}


def step(fn, loss, f_s, f_t, target) -> tuple[float, dict, list[torch.Tensor]]:
    """One forward + backward of every term: seconds, the values, and the gradients (student features,
    then every parameter of ``loss``)."""
    loss.zero_grad(set_to_none=True)
    f_s.grad = None
    start = time.perf_counter()
    out = fn(loss, f_s, f_t, target)
    (out["apd_kl"] + out["apd_align"] + out["apd_teacher_ce"]).backward()
    seconds = time.perf_counter() - start
    grads = [f_s.grad, *(p.grad for p in loss.parameters())]
    return seconds, {k: v.detach() for k, v in out.items()}, grads


def make_inputs(B: int, C: int, h: int, w: int, K: int):
    g = torch.Generator().manual_seed(0)
    f_s = torch.randn(B, C, h, w, generator=g, requires_grad=True)
    f_t = torch.randn(B, C, h, w, generator=g)
    # labels at 8x the feature size, blocky like real masks, ~10% ignored
    coarse = torch.randint(0, K, (B, h // 2 + 1, w // 2 + 1), generator=g)
    target = F.interpolate(coarse[:, None].float(), size=(8 * h, 8 * w), mode="nearest")[:, 0].long()
    target[torch.rand(target.shape, generator=g) < 0.1] = 255
    return f_s, f_t, target


class ChannelScale(torch.nn.Module):
    """A learnable per-channel scale (initialised to 1): the cheapest adapter that still has parameters."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight[:, None, None]


def without_adapters(loss: APDLoss) -> APDLoss:
    """The same loss with the adapters' convolutions removed (student side: identity; teacher side: a
    per-channel scale, so that the teacher-side cross-entropy still back-propagates): what is left is
    the part where the implementations differ, plus the full-resolution cross-entropy."""
    torch.manual_seed(0)
    bare = APDLoss(loss.num_classes, loss.student_channels, loss.teacher_channels, adapter=True, scope=loss.scope)
    bare.pool_size = loss.pool_size
    bare.student_adapter, bare.teacher_adapter = torch.nn.Identity(), ChannelScale(loss.teacher_channels)
    return bare


def best_of(fn, repeats: int) -> float:
    fn()
    return min(_timed(fn) for _ in range(repeats))


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def memory_bandwidth(megabytes: int = 256, repeats: int = 5) -> tuple[float, float]:
    """Bytes per second of a ``megabytes`` float32 copy (read + write) and add (2 reads + 1 write), best
    of ``repeats`` each, with torch's threads."""
    n = megabytes * 2**20 // 4
    a, b, c = torch.ones(n), torch.ones(n), torch.empty(n)
    c.copy_(a)  # touch every page before timing
    copy = best_of(lambda: c.copy_(a), repeats)
    add = best_of(lambda: torch.add(a, b, out=c), repeats)
    return 2 * 4 * n / copy, 3 * 4 * n / add


def floor_bytes(B: int, C: int, h: int, w: int) -> int:
    """Read both feature maps, write the student features' gradient (float32), read the int64 labels."""
    return 4 * 3 * B * C * h * w + 8 * B * (8 * h) * (8 * w)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest difference relative to the largest magnitude of ``b``."""
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def bench(B: int, C: int, h: int, w: int, K: int, repeats: int, bandwidth: float) -> None:
    f_s, f_t, target = make_inputs(B, C, h, w, K)
    torch.manual_seed(0)
    loss = APDLoss(K, C, C, adapter=True, adapter_channels=512)
    modules = {"release adapters": loss, "adapter convs removed": without_adapters(loss)}
    times: dict[tuple[str, str], list[float]] = {}
    results: dict[tuple[str, str], tuple[dict, list]] = {}
    for i in range(repeats + 1):  # the first round warms up; interleaved, so every row sees the same load
        for label, module in modules.items():
            for impl, fn in IMPLEMENTATIONS.items():
                seconds, values, grads = step(fn, module, f_s, f_t, target)
                results[label, impl] = values, grads
                if i > 0:
                    times.setdefault((label, impl), []).append(seconds)
    floor = floor_bytes(B, C, h, w) / bandwidth
    print(
        f"(B,C,h,w,K)=({B},{C},{h},{w},{K}) labels {8 * h}x{8 * w}: memory floor "
        f"{floor_bytes(B, C, h, w) / 1e6:.0f} MB = {1000 * floor:.1f} ms",
        flush=True,
    )
    for label in modules:
        best = {impl: min(times[label, impl]) for impl in IMPLEMENTATIONS}
        (new_v, new_g), (old_v, old_g), (loop_v, _) = (results[label, i] for i in ("new", "old", "loop"))
        value_diff = max(relative(new_v[k], old_v[k]) for k in new_v)
        loop_diff = max(relative(new_v[k], loop_v[k]) for k in new_v)
        grad_diff = max(relative(a, b) for a, b in zip(new_g, old_g) if b is not None)
        print(
            f"  {label:22s} loop {1000 * best['loop']:8.1f} ms  old {1000 * best['old']:8.1f} ms  "
            f"new {1000 * best['new']:8.1f} ms  new vs loop x{best['loop'] / best['new']:5.2f}  "
            f"vs old x{best['old'] / best['new']:5.2f}  new = {best['new'] / floor:6.1f} x floor "
            f"(old {best['old'] / floor:6.1f} x)",
            flush=True,
        )
        print(
            f"  {'':22s} max rel diff new vs old: values {value_diff:.1e}, gradients {grad_diff:.1e}; "
            f"new vs loop: values {loop_diff:.1e}",
            flush=True,
        )
        # both float32 implementations against the formula in float64 (the old code on float64 copies)
        module = copy.deepcopy(modules[label]).double()
        x_s = f_s.detach().double().requires_grad_()
        _, true_v, true_g = step(IMPLEMENTATIONS["old"], module, x_s, f_t.double(), target)
        errors = {}
        for impl in ("new", "old"):
            v, g = results[label, impl]
            errors[impl] = (
                max(relative(v[k].double(), true_v[k]) for k in v),
                max(relative(a.double(), b) for a, b in zip(g, true_g) if b is not None),
            )
        print(
            f"  {'':22s} float32 vs float64: new values {errors['new'][0]:.1e}, gradients {errors['new'][1]:.1e}; "
            f"old values {errors['old'][0]:.1e}, gradients {errors['old'][1]:.1e}",
            flush=True,
        )

    def adapters_only() -> None:
        a, b = loss.student_adapter(f_s), loss.teacher_adapter(f_t)
        (a.sum() + b.sum()).backward()

    z_low = torch.randn(B, K, h, w)
    keep = torch.ones(B, K)

    def old_ce() -> None:
        z = z_low.clone().requires_grad_()
        up = F.interpolate(z, size=target.shape[-2:], mode="bilinear", align_corners=True)
        F.cross_entropy(up, target, ignore_index=255).backward()

    def new_ce() -> None:
        z = z_low.clone().requires_grad_()
        ce = UpsampleCrossEntropy.apply(z, keep, target, 255, 10.0)
        (ce.sum() / (target != 255).sum()).backward()

    t_adapters = best_of(adapters_only, repeats)
    t_old_ce, t_new_ce = best_of(old_ce, repeats), best_of(new_ce, repeats)
    print(
        f"  adapters alone (4 1x1 convs, fwd+bwd) {1000 * t_adapters:.1f} ms; full-resolution upsample + CE "
        f"fwd+bwd: old {1000 * t_old_ce:.1f} ms, new {1000 * t_new_ce:.1f} ms",
        flush=True,
    )


def loop_pools(groups: int):
    """:func:`loop_apd` applied to each of ``groups`` pools (images ``g, g + groups, ...``, the layout of
    ``APDLoss(pool_size=...)``) and averaged over the pools: the release on ``groups`` GPUs."""

    def run(loss: APDLoss, f_s: torch.Tensor, f_t: torch.Tensor, target: torch.Tensor) -> dict:
        outs = [loop_apd(loss, f_s[g::groups], f_t[g::groups], target[g::groups]) for g in range(groups)]
        return {k: torch.stack([o[k] for o in outs]).mean() for k in outs[0]}

    return run


def bench_pools(B: int, C: int, h: int, w: int, K: int, repeats: int) -> None:
    """One pool of B images, pools of 2 (``pool_size=2``) and pools of 1 (``scope="image"``): forward +
    backward of the new and the old vectorised loss against the per-class loop applied pool by pool, with
    the release's adapters and with the adapter convolutions removed; all rows interleaved, best of
    ``repeats``."""
    f_s, f_t, target = make_inputs(B, C, h, w, K)
    variants = {
        f"one pool of {B} (pool_size unset)": ({"scope": "batch"}, 1),
        "pools of 2 (pool_size=2)": ({"scope": "batch", "pool_size": 2}, -(-B // 2)),
        "pools of 1 (scope image)": ({"scope": "image"}, B),
    }
    runs = []  # (variant, adapters, implementation, module, fn)
    for label, (kwargs, groups) in variants.items():
        torch.manual_seed(0)
        loss = APDLoss(K, C, C, adapter=True, adapter_channels=512, **kwargs)
        for adapters, module in (("adapters", loss), ("no adapter convs", without_adapters(loss))):
            runs.append((label, adapters, "new", module, new_apd))
            runs.append((label, adapters, "old", module, reference_terms))
            runs.append((label, adapters, "loop", module, loop_pools(groups)))
    times: dict[tuple[str, str, str], list[float]] = {}
    values: dict[tuple[str, str, str], dict] = {}
    for i in range(repeats + 1):  # the first round warms up; interleaved, so every row sees the same load
        for label, adapters, impl, module, fn in runs:
            seconds, values[label, adapters, impl], _ = step(fn, module, f_s, f_t, target)
            if i > 0:
                times.setdefault((label, adapters, impl), []).append(seconds)
    best = {key: min(t) for key, t in times.items()}
    print(f"pools at (B,C,h,w,K)=({B},{C},{h},{w},{K}), labels {8 * h}x{8 * w}, forward+backward, best of {repeats}:")
    for label in variants:
        cells = []
        for adapters in ("adapters", "no adapter convs"):
            t_new, t_old, t_loop = (best[label, adapters, impl] for impl in ("new", "old", "loop"))
            ours, ref = values[label, adapters, "new"], values[label, adapters, "loop"]
            diff = max(relative(ours[k], ref[k]) for k in ours)
            cells.append(
                f"{adapters}: new {1000 * t_new:7.1f} old {1000 * t_old:7.1f} loop {1000 * t_loop:7.1f} ms, "
                f"new vs loop x{t_loop / t_new:4.2f} (rel diff {diff:.0e})"
            )
        print(f"  {label:34s} " + " | ".join(cells), flush=True)


def feature_map_passes(fn, numel: int) -> tuple[int, int, dict[str, int]]:
    """Passes over a ``B x C x h x w`` map (``numel`` elements) in one forward + backward of ``fn``: the
    feature-map inputs of every operator that reads data and calls no such operator itself (views,
    allocations and ``contiguous`` no-ops excluded; a matmul's copy counts as the copy). Also returns the
    README's earlier count (innermost operators only), which misses every operator with a bookkeeping
    child: ``bmm`` and ``mm`` (``resolve_conj``), some norms (``as_strided``), ``sum`` (``fill_``)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    fn()
    with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        fn()

    def reads(event) -> int:
        if not event.name.startswith("aten::") or event.name in _NO_DATA:
            return 0
        return sum(1 for s in event.input_shapes if isinstance(s, list) and s and math.prod(s) == numel)

    counted: dict[int, bool] = {}  # id(event) -> the event itself is counted
    below: dict[int, bool] = {}  # id(event) -> the event or one of its descendants is counted

    def visit(event) -> bool:
        if id(event) not in below:
            children = [visit(child) for child in event.cpu_children]  # a list: every child is visited
            counted[id(event)] = reads(event) > 0 and not any(children)
            below[id(event)] = counted[id(event)] or any(children)
        return below[id(event)]

    passes: dict[str, int] = {}
    innermost = 0
    for event in prof.events():
        visit(event)
        if counted[id(event)]:
            passes[event.name] = passes.get(event.name, 0) + reads(event)
        if not event.cpu_children and event.name not in _VIEWS and event.name.startswith("aten::"):
            innermost += sum(1 for s in event.input_shapes if isinstance(s, list) and s and math.prod(s) == numel)
    return sum(passes.values()), innermost, passes


def profile(B: int, C: int, h: int, w: int, K: int) -> None:
    """Per-operator self time of one new forward + backward with the release's adapters (after a
    warm-up), and, with the adapter convolutions removed, the passes over a feature map of the old and
    the new implementation, less those of the adapter stand-ins alone (:func:`feature_map_passes`)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    f_s, f_t, target = make_inputs(B, C, h, w, K)
    loss = APDLoss(K, C, C, adapter=True, adapter_channels=512)
    step(new_apd, loss, f_s, f_t, target)
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        step(new_apd, loss, f_s, f_t, target)
    print(f"profile of the new loss at (B,C,h,w,K)=({B},{C},{h},{w},{K}), forward + backward:")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=16, max_name_column_width=40))

    bare = without_adapters(loss)
    numel = B * C * h * w
    grad_t = torch.ones_like(f_t)

    def stand_ins() -> None:  # the teacher's per-channel scale alone, fed a feature-map gradient as the loss
        bare.zero_grad(set_to_none=True)  # feeds it (the student's identity is no operator)
        bare.teacher_adapter(f_t).backward(grad_t)

    base, base_innermost, listing = feature_map_passes(stand_ins, numel)
    print(
        f"feature-map passes (inputs of B*C*h*w = {numel} elements to the operators that read them, forward + "
        "backward; in brackets the README's earlier innermost-operator count):"
    )
    print(f"  adapter stand-ins alone (identity, per-channel scale): {base} [{base_innermost}] ({_listing(listing)})")
    for impl in ("old", "new"):
        total, innermost, listing = feature_map_passes(
            lambda impl=impl: step(IMPLEMENTATIONS[impl], bare, f_s, f_t, target), numel
        )
        print(
            f"  {impl}: {total} [{innermost}] in all, {total - base} [{innermost - base_innermost}] after the "
            f"adapters ({_listing(listing)}); {(total - base) * numel * 4 / 1e6:.0f} MB read",
            flush=True,
        )


def _listing(passes: dict[str, int]) -> str:
    return ", ".join(f"{name.removeprefix('aten::')} {n}" for name, n in sorted(passes.items(), key=lambda x: -x[1]))


_VIEWS = {
    f"aten::{n}"
    for n in "as_strided view _reshape_alias _unsafe_view reshape resolve_conj resolve_neg detach to expand "
    "permute transpose t flatten slice select squeeze unsqueeze alias".split()
}
_NO_DATA = _VIEWS | {
    f"aten::{n}"
    for n in "contiguous mT expand_as empty empty_like empty_strided new_empty new_empty_strided new_ones new_zeros "
    "zeros_like ones_like".split()
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--profile", action="store_true", help="also count the passes at the first shape")
    parser.add_argument("--pools", action="store_true", help="one pool vs pools of 2 vs scope image, instead")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, forward+backward, best of {args.repeats}")
    policy = os.environ.get("OMP_WAIT_POLICY", "unset (libgomp: active)")
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs at the start, OMP_WAIT_POLICY {policy}")
    if args.pools:
        # one process with the release's total batch: Cityscapes 8 x 713 crops (90 x 90 features),
        # ADE20K 8 x 473 crops (60 x 60)
        pool_shapes = [(8, 64, 16, 16, 19)] if args.quick else [(8, 512, 90, 90, 19), (8, 512, 60, 60, 150)]
        for shape in pool_shapes:
            bench_pools(*shape, repeats=args.repeats)
        return
    copy, add = memory_bandwidth()
    bandwidth = max(copy, add)
    print(
        f"memory bandwidth: copy {copy / 1e9:.1f} GB/s, add {add / 1e9:.1f} GB/s; the floor uses {bandwidth / 1e9:.1f}"
    )
    print("memory floor = (4 * 3 * B*C*h*w + 8 * B*H*W) bytes / bandwidth: read both feature maps, write the")
    print("student features' gradient (float32), read the int64 labels")
    shapes = (
        [(2, 64, 16, 16, 19), (2, 64, 12, 12, 150)]
        if args.quick
        else [(2, 512, 90, 90, 19), (4, 512, 90, 90, 19), (8, 512, 64, 64, 150)]
    )
    for shape in shapes:
        bench(*shape, repeats=args.repeats, bandwidth=bandwidth)
    print(f"load average {os.getloadavg()[0]:.2f} at the end", flush=True)
    if args.profile:
        # the quick shapes have B*H*W == B*C*h*w (labels counted as feature maps): profile a real one
        profile(*(shapes[0] if not args.quick else (2, 128, 24, 24, 19)))


if __name__ == "__main__":
    main()
