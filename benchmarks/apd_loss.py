"""APDLoss (vectorised) against a straightforward per-class-loop implementation of the same formula.

Times forward + backward of every term (student KL and alignment into the student features and the
student adapter; the full-resolution teacher-side cross-entropy into the teacher adapter), side by
side in one run, and prints the ratio and the largest relative difference of the values.

    python benchmarks/apd_loss.py            # the three shapes of the issue
    python benchmarks/apd_loss.py --quick    # small shapes, a smoke test
    python benchmarks/apd_loss.py --profile  # + where the vectorised loss spends its time (torch.profiler)
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
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, forward+backward, best of {args.repeats}")
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
