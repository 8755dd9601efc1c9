"""APDLoss (vectorised) against a straightforward per-class-loop implementation of the same formula.

Times forward + backward of every term (student KL and alignment into the student features and the
student adapter; the full-resolution teacher-side cross-entropy into the teacher adapter), side by
side in one run, and prints the ratio and the largest relative difference of the values.

    python benchmarks/apd_loss.py            # the three shapes of the issue
    python benchmarks/apd_loss.py --quick    # small shapes, a smoke test
    python benchmarks/apd_loss.py --profile  # + where the vectorised loss spends its time (torch.profiler)
    python benchmarks/apd_loss.py --pools    # instead: one pool vs pools of 2 (pool_size) vs scope image
                                             # at the one-process release batches (Cityscapes, ADE20K)
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F

from segdistill.distill import APDLoss


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


def step(fn, loss, f_s, f_t, target) -> tuple[float, dict]:
    loss.zero_grad(set_to_none=True)
    f_s.grad = None
    start = time.perf_counter()
    out = fn(loss, f_s, f_t, target)
    (out["apd_kl"] + out["apd_align"] + out["apd_teacher_ce"]).backward()
    return time.perf_counter() - start, {k: v.detach() for k, v in out.items()}


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
    the part where the two implementations differ, plus the full-resolution cross-entropy."""
    torch.manual_seed(0)
    bare = APDLoss(loss.num_classes, loss.student_channels, loss.teacher_channels, adapter=True)
    bare.student_adapter, bare.teacher_adapter = torch.nn.Identity(), ChannelScale(loss.teacher_channels)
    return bare


def best_of(fn, repeats: int) -> float:
    fn()
    return min(_timed(fn) for _ in range(repeats))


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench(B: int, C: int, h: int, w: int, K: int, repeats: int) -> None:
    f_s, f_t, target = make_inputs(B, C, h, w, K)
    torch.manual_seed(0)
    loss = APDLoss(K, C, C, adapter=True, adapter_channels=512)
    vectorised = lambda m, a, b, c: m(a, b, c)  # noqa: E731
    rows = {}
    for label, module in (("APDLoss", loss), ("  without adapter convs", without_adapters(loss))):
        times = {"vectorised": [], "loop": []}
        for i in range(repeats + 1):  # the first round warms up; interleaved, so both see the same load
            for name, fn in (("vectorised", vectorised), ("loop", loop_apd)):
                seconds, values = step(fn, module, f_s, f_t, target)
                if i > 0:
                    times[name].append(seconds)
                if name == "vectorised":
                    ours = values
                else:
                    ref = values
        diff = max(abs(ours[k] - ref[k]).item() / max(abs(ref[k]).item(), 1e-12) for k in ours)
        rows[label] = (min(times["vectorised"]), min(times["loop"]), diff)

    def adapters_only() -> None:
        a, b = loss.student_adapter(f_s), loss.teacher_adapter(f_t)
        (a.sum() + b.sum()).backward()

    z_low = torch.randn(B, K, h, w)

    def full_resolution_ce() -> None:
        z = z_low.clone().requires_grad_()
        up = F.interpolate(z, size=target.shape[-2:], mode="bilinear", align_corners=True)
        F.cross_entropy(up, target, ignore_index=255).backward()

    print(f"(B,C,h,w,K)=({B},{C},{h},{w},{K}) labels {8 * h}x{8 * w}:", flush=True)
    for label, (t_vec, t_loop, diff) in rows.items():
        print(
            f"  {label:24s} vectorised {1000 * t_vec:8.1f} ms  loop {1000 * t_loop:8.1f} ms  "
            f"speed-up x{t_loop / t_vec:5.2f}  max rel diff {diff:.1e}",
            flush=True,
        )
    t_adapters, t_ce = best_of(adapters_only, repeats), best_of(full_resolution_ce, repeats)
    t_vec = rows["APDLoss"][0]
    print(
        f"  shared by both: adapters (4 1x1 convs, fwd+bwd) {1000 * t_adapters:.1f} ms = "
        f"{100 * t_adapters / t_vec:.0f}% of the vectorised loss; full-resolution upsample + CE "
        f"{1000 * t_ce:.1f} ms = {100 * t_ce / t_vec:.0f}%",
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
    backward of the vectorised loss against the per-class loop applied pool by pool, with the release's
    adapters and with the adapter convolutions removed; all rows interleaved, best of ``repeats``."""
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
        bare = without_adapters(loss)
        bare.scope, bare.pool_size = loss.scope, loss.pool_size
        for adapters, module in (("adapters", loss), ("no adapter convs", bare)):
            runs.append((label, adapters, "vectorised", module, lambda m, a, b, c: m(a, b, c)))
            runs.append((label, adapters, "loop", module, loop_pools(groups)))
    times: dict[tuple[str, str, str], list[float]] = {}
    values: dict[tuple[str, str, str], dict] = {}
    for i in range(repeats + 1):  # the first round warms up; interleaved, so every row sees the same load
        for label, adapters, impl, module, fn in runs:
            seconds, values[label, adapters, impl] = step(fn, module, f_s, f_t, target)
            if i > 0:
                times.setdefault((label, adapters, impl), []).append(seconds)
    best = {key: min(t) for key, t in times.items()}
    print(f"pools at (B,C,h,w,K)=({B},{C},{h},{w},{K}), labels {8 * h}x{8 * w}, forward+backward, best of {repeats}:")
    for label in variants:
        cells = []
        for adapters in ("adapters", "no adapter convs"):
            t_vec, t_loop = best[label, adapters, "vectorised"], best[label, adapters, "loop"]
            ours, ref = values[label, adapters, "vectorised"], values[label, adapters, "loop"]
            diff = max(abs(ours[k] - ref[k]).item() / max(abs(ref[k]).item(), 1e-12) for k in ours)
            cells.append(
                f"{adapters}: vectorised {1000 * t_vec:7.1f} ms loop {1000 * t_loop:7.1f} ms "
                f"x{t_loop / t_vec:4.2f} (rel diff {diff:.0e})"
            )
        print(f"  {label:34s} " + " | ".join(cells), flush=True)
    first = next(iter(variants))
    for adapters in ("adapters", "no adapter convs"):
        base = best[first, adapters, "vectorised"]
        ratios = ", ".join(
            f"{label.split(' (')[0]} x{best[label, adapters, 'vectorised'] / base:.2f}" for label in variants
        )
        print(f"  vectorised time against one pool, {adapters}: {ratios}", flush=True)


def profile(B: int, C: int, h: int, w: int, K: int) -> None:
    """Per-operator self time of one vectorised forward + backward (after a warm-up), largest first,
    and a count of the operator calls that read or write a whole feature map (adapters excluded)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    f_s, f_t, target = make_inputs(B, C, h, w, K)
    loss = APDLoss(K, C, C, adapter=True, adapter_channels=512)
    run = lambda m, a, b, c: m(a, b, c)  # noqa: E731
    step(run, loss, f_s, f_t, target)
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        step(run, loss, f_s, f_t, target)
    print(f"profile of the vectorised loss at (B,C,h,w,K)=({B},{C},{h},{w},{K}), forward + backward:")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14, max_name_column_width=40))

    bare = without_adapters(loss)
    step(run, bare, f_s, f_t, target)
    with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step(run, bare, f_s, f_t, target)
    numel = B * C * h * w
    passes: dict[str, int] = {}
    for event in prof.events():
        if event.cpu_children or not event.name.startswith("aten::") or event.name in _VIEWS:
            continue  # innermost operators that touch memory only
        shapes = [s for s in event.input_shapes if isinstance(s, list) and s and math.prod(s) == numel]
        if shapes:
            passes[event.name] = passes.get(event.name, 0) + len(shapes)
    total = sum(passes.values())
    listing = ", ".join(f"{name.removeprefix('aten::')} {n}" for name, n in sorted(passes.items(), key=lambda x: -x[1]))
    print(
        f"feature-map passes (operator inputs of B*C*h*w = {numel} elements, forward + backward, after the "
        f"adapters): {total} ({listing}); {total * numel * 4 / 1e6:.0f} MB read"
    )


_VIEWS = {
    f"aten::{n}"
    for n in "as_strided view _reshape_alias _unsafe_view reshape resolve_conj resolve_neg detach to expand "
    "permute transpose t flatten slice select squeeze unsqueeze alias".split()
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="also profile the vectorised loss at the first shape")
    parser.add_argument("--pools", action="store_true", help="one pool vs pools of 2 vs scope image, instead")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, forward+backward, best of {args.repeats}")
    if args.pools:
        # one process with the release's total batch: Cityscapes 8 x 713 crops (90 x 90 features),
        # ADE20K 8 x 473 crops (60 x 60)
        pool_shapes = [(8, 64, 16, 16, 19)] if args.quick else [(8, 512, 90, 90, 19), (8, 512, 60, 60, 150)]
        for shape in pool_shapes:
            bench_pools(*shape, repeats=args.repeats)
        return
    shapes = (
        [(2, 64, 16, 16, 19), (2, 64, 12, 12, 150)]
        if args.quick
        else [(2, 512, 90, 90, 19), (4, 512, 90, 90, 19), (8, 512, 64, 64, 150)]
    )
    for shape in shapes:
        bench(*shape, repeats=args.repeats)
    if args.profile:
        profile(*shapes[0])


if __name__ == "__main__":
    main()
