"""Distillation methods by name: each builds its loss modules and default weights from its options.

A plain dict, no registry magic: ``METHODS[name](context, options) -> (losses, weights)``, where
``options`` is the method's options dataclass (:data:`segdistill.base.method_options.METHOD_OPTIONS`,
the one list of method names; a test keeps the two to the same names).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..base.labels import IGNORE_INDEX
from ..base.method_options import (
    AfDCDOptions,
    APDOptions,
    ATOptions,
    BPKDOptions,
    CIRKDOptions,
    CWDOptions,
    DISTOptions,
    DKDOptions,
    FitNetOptions,
    IFVDOptions,
    KDOptions,
    MasKDOptions,
    MGDOptions,
    SKDOptions,
    check_method,
    method_options,
)
from ..base.schema import fields_of
from ..base.weights_io import load_weights_file
from ..errors import UserError
from .adversarial import AdversarialLoss
from .afdcd import AfDCDLoss
from .apd import APDLoss
from .at import ATLoss
from .base import DistillLoss
from .bpkd import BPKDLoss
from .cirkd import CIRKDMemoryLoss, CIRKDMiniBatchLoss
from .cwd import CWDLoss
from .dist import DISTLoss
from .dkd import DKDLoss
from .fitnet import FitNetLoss
from .ifvd import IFVDLoss
from .kd import KDLoss
from .maskd import MasKDLoss
from .mgd import MGDLoss
from .skd import PairwiseLoss

Built = tuple[dict[str, DistillLoss], dict[str, float]]  # losses by name, their default weights


@dataclass
class MethodContext:
    num_classes: int
    student_channels: dict[str, int]  # tap -> channels, probed from the student
    teacher_channels: dict[str, int]
    ignore_index: int = IGNORE_INDEX

    def __post_init__(self) -> None:
        self.student_channels = TapChannels("student", self.student_channels)
        self.teacher_channels = TapChannels("teacher", self.teacher_channels)


class TapChannels(dict):
    """Channels by tap name; a tap that a method reads and the side does not define is a one-line error."""

    def __init__(self, side: str, channels: dict[str, int]) -> None:
        super().__init__(channels)
        self.side = side

    def __missing__(self, tap: str) -> int:
        defined = ", ".join(sorted(self)) or "none"
        raise UserError(
            f"a distillation method reads the {self.side}'s {tap!r} tap, which is not defined (defined: {defined}); "
            f"set distill.{self.side}_taps.{tap} to a module name (`segdistill taps CONFIG` lists them)"
        )


def build_kd(ctx: MethodContext, opts: KDOptions) -> Built:
    """Pixel-wise KD on logits as the APD release runs it: T=1, 'mean' reduction, upsampled to the label
    size, weight 10. ``reduction: pixel, upsample: false`` with weight 1 is the CIRKD codebase's KD."""
    return {"kd": KDLoss(opts.temperature, opts.reduction, opts.upsample, opts.standardize)}, {"kd": 10.0}


def build_apd(ctx: MethodContext, opts: APDOptions) -> Built:
    """APD as released: APD KL 10, prototype alignment 10, scale 10, adapters on, plus logit KD 10 (T=1);
    prototypes pooled over ``pool_size`` images (the release's images per GPU; unset: the whole batch)."""
    losses: dict[str, DistillLoss] = {
        "apd": APDLoss(
            ctx.num_classes,
            ctx.student_channels["feat"],
            ctx.teacher_channels["feat"],
            ignore_index=ctx.ignore_index,
            **fields_of(opts, ("adapter", "adapter_channels", "scale", "scope", "pool_size", "teacher_adapter_lr")),
        )
    }
    weights = {"apd": 10.0}
    if opts.with_kd:
        losses["kd"] = KDLoss(opts.kd_temperature)
        weights["kd"] = 10.0
    return losses, weights


def _reference_kd(opts: Any) -> Built:
    """The KD that the CIRKD-codebase scripts add to FitNets, AT, SKD, IFVD and CIRKD: T = 1 at the
    feature grid (no upsampling), per-pixel KL averaged over pixels (batchmean), weight 1."""
    if not opts.with_kd:
        return {}, {}
    return {"kd": KDLoss(1.0, "pixel", upsample=False)}, {"kd": 1.0}


def _adversarial(ctx: MethodContext, opts: SKDOptions | IFVDOptions) -> Built:
    """The holistic (hinge GAN) term of SKD / IFVD: generator weight 0.001, D weight 0.1, D Adam 4e-4."""
    if not opts.adversarial:
        return {}, {}
    return {"adv": AdversarialLoss(ctx.num_classes, d_weight=opts.d_weight, lr=opts.d_lr)}, {"adv": 0.001}


def build_fitnet(ctx: MethodContext, opts: FitNetOptions) -> Built:
    """FitNets hint on the head feature, weight 10, + KD 1 (CIRKD ``train_fitnet.sh``)."""
    losses, weights = _reference_kd(opts)
    losses["fitnet"] = FitNetLoss(ctx.student_channels["feat"], ctx.teacher_channels["feat"])
    weights["fitnet"] = 10.0
    return losses, weights


def build_at(ctx: MethodContext, opts: ATOptions) -> Built:
    """Attention transfer on the head feature (p = 2), weight 10000, + KD 1 (CIRKD ``train_at.sh``)."""
    for tap in opts.taps:
        if tap not in ctx.student_channels or tap not in ctx.teacher_channels:
            raise UserError(
                f"distill.options.at.taps names {tap!r}, which is not a tap of both models "
                f"(define it in distill.student_taps and distill.teacher_taps)"
            )
    losses, weights = _reference_kd(opts)
    losses["at"] = ATLoss(tuple(opts.taps), opts.p)
    weights["at"] = 10000.0
    return losses, weights


def build_skd(ctx: MethodContext, opts: SKDOptions) -> Built:
    """SKD as the CIRKD codebase runs it: pixel-wise (KD 1 at the feature grid), pair-wise on 2x2-pooled
    nodes (weight 10), holistic hinge GAN (0.001, D 0.1)."""
    losses, weights = _reference_kd(opts)
    losses["skd_pa"] = PairwiseLoss(opts.pool)
    weights["skd_pa"] = 10.0
    adv, adv_w = _adversarial(ctx, opts)
    return {**losses, **adv}, {**weights, **adv_w}


def build_ifvd(ctx: MethodContext, opts: IFVDOptions) -> Built:
    """IFVD as the CIRKD codebase runs it: intra-class variation (weight 20) + KD 1 + hinge GAN."""
    losses, weights = _reference_kd(opts)
    losses["ifvd"] = IFVDLoss(ctx.num_classes, ctx.ignore_index)
    weights["ifvd"] = 20.0
    adv, adv_w = _adversarial(ctx, opts)
    return {**losses, **adv}, {**weights, **adv_w}


def build_cwd(ctx: MethodContext, opts: CWDOptions) -> Built:
    """CWD on logits, T = 4, weight 3 (the original release's headline recipe); ``feature: true`` adds
    the CIRKD codebase's feature term (weight 50)."""
    channels = (ctx.student_channels["feat"], ctx.teacher_channels["feat"]) if opts.feature else None
    return {"cwd": CWDLoss(opts.temperature, channels)}, {"cwd": 3.0, "cwd_feat": 50.0}


def build_dist(ctx: MethodContext, opts: DISTOptions) -> Built:
    """DIST on main (+ 0.4 x auxiliary) logits, beta = gamma = tau = 1, weight 1; replaces KD."""
    if opts.aux_weight > 0:
        missing = [
            side
            for side, ch in (("student", ctx.student_channels), ("teacher", ctx.teacher_channels))
            if "aux_logits" not in ch
        ]
        if missing:
            raise UserError(
                f"DIST's auxiliary term (distill.options.dist.aux_weight={opts.aux_weight}) needs auxiliary logits, "
                f"and the {' and '.join(missing)} has none: set distill.options.dist.aux_weight=0 or define the "
                "'aux_logits' tap in distill.student_taps/teacher_taps"
            )
    return {"dist": DISTLoss(opts.beta, opts.gamma, opts.tau, opts.aux_weight, opts.standardize)}, {"dist": 1.0}


def build_dkd(ctx: MethodContext, opts: DKDOptions) -> Built:
    """DKD per pixel: ``dkd_tckd`` (alpha T^2 x target-class KL) + ``dkd_nckd`` (beta T^2 x non-target KL),
    averaged over valid pixels; alpha 1, beta 2, T 1, weight 1; replaces KD."""
    keys = ("alpha", "beta", "temperature", "upsample", "standardize")
    return {"dkd": DKDLoss(**fields_of(opts, keys), ignore_index=ctx.ignore_index)}, {"dkd": 1.0}


def build_cirkd(ctx: MethodContext, opts: CIRKDOptions) -> Built:
    """CIRKD as ``train_cirkd.py`` runs it: KD 1 + mini-batch pixel relations (1) + memory-based pixel (0.1)
    and region (0.1) relations; reference queue sizes 20000 / 2000 per class, contrast 4096 / 1024."""
    losses, weights = _reference_kd(opts)
    losses["cirkd_mb"] = CIRKDMiniBatchLoss(opts.temperature, opts.pool)
    weights["cirkd_mb"] = 1.0
    if opts.memory:
        memory = ("pixel_memory", "region_memory", "pixel_contrast", "region_contrast", "pixels_per_image")
        losses["cirkd_mem"] = CIRKDMemoryLoss(
            ctx.num_classes,
            ctx.student_channels["feat"],
            ctx.teacher_channels["feat"],
            temperature=opts.temperature,
            ignore_index=ctx.ignore_index,
            **fields_of(opts, memory),
        )
        weights.update({"cirkd_pix": 0.1, "cirkd_reg": 0.1})
    return losses, weights


def build_mgd(ctx: MethodContext, opts: MGDOptions) -> Built:
    """MGD as its segmentation configs run it: the masked generation term (weight 2e-5, mask ratio 0.75)
    on the ``feat`` tap (the release distils the backbone's last stage: tap ``head:input``) + CWD on
    logits (T 4, weight 3)."""
    losses: dict[str, DistillLoss] = {
        "mgd": MGDLoss(ctx.student_channels["feat"], ctx.teacher_channels["feat"], opts.mask_ratio)
    }
    weights = {"mgd": 2e-5}
    if opts.with_cwd:
        losses["cwd"] = CWDLoss(4.0)
        weights.update({"cwd": 3.0, "cwd_feat": 50.0})
    return losses, weights


def build_afdcd(ctx: MethodContext, opts: AfDCDOptions) -> Built:
    """Af-DCD as its Cityscapes scripts run it: masked feature mimicking (2e-6) + omni-contrast (5e-3,
    tau 0.07, 16 channel groups, 4x4 windows after 4x4 max-pooling) on the ``feat`` tap (the release:
    the backbone's last stage, ``head:input``) + KD 1 (T 1, per pixel at the logits' grid)."""
    losses, weights = _reference_kd(opts)
    keys = ("mask_ratio", "mask", "enhanced_projector", "tau", "groups", "pool", "patch", "windows_per_chunk")
    losses["afdcd"] = AfDCDLoss(
        ctx.student_channels["feat"],
        ctx.teacher_channels["feat"],
        max_grad_norm=opts.max_grad_norm,
        **fields_of(opts, keys),
    )
    weights.update({"afdcd_fd": 2e-6, "afdcd_ctr": 5e-3})
    return losses, weights


def build_bpkd(ctx: MethodContext, opts: BPKDOptions) -> Built:
    """BPKD: edge KL over classes on the logits masked by the labels' soft class boundaries (weight 50,
    alpha 2) + channel-wise KL of the body logits (weight 20), T 1; no KD term."""
    keys = ("kernel_size", "edge_temperature", "body_temperature", "edge_alpha", "mask_logits")
    loss = BPKDLoss(ctx.num_classes, ignore_index=ctx.ignore_index, **fields_of(opts, keys))
    return {"bpkd": loss}, {"bpkd_edge": 50.0, "bpkd_body": 20.0}


def build_maskd(ctx: MethodContext, opts: MasKDOptions) -> Built:
    """MasKD stage 2 as ``train_maskd.py``: the masked MSE of the logits under 8 frozen receptive tokens
    (weight 1, + 0.4 x the same on the auxiliary logits), no KD; the tokens come from stage 1."""
    command = "learn them first with `segdistill maskd-tokens CONFIG` (configs/<dataset>/maskd_tokens.yaml)"
    if not opts.tokens:
        raise UserError(f"distill.options.maskd.tokens is not set: MasKD distils through receptive tokens; {command}")
    if not Path(opts.tokens).is_file():
        raise UserError(f"MasKD's receptive tokens {opts.tokens} (distill.options.maskd.tokens) not found; {command}")
    state = load_weights_file(opts.tokens)
    token = state.get("mask_token", state.get("tokens.mask_token"))
    if token is None:
        raise UserError(f"{opts.tokens} holds no receptive tokens (mask_token); {command}")
    if opts.aux_weight > 0 and opts.tap == "logits":
        missing = [
            s
            for s, ch in (("student", ctx.student_channels), ("teacher", ctx.teacher_channels))
            if "aux_logits" not in ch
        ]
        if missing:
            raise UserError(
                f"MasKD's auxiliary term (distill.options.maskd.aux_weight={opts.aux_weight}) needs auxiliary logits, "
                f"and the {' and '.join(missing)} has none: set distill.options.maskd.aux_weight=0"
            )
    loss = MasKDLoss(
        ctx.teacher_channels[opts.tap],
        opts.num_tokens,
        tap=opts.tap,
        aux_weight=opts.aux_weight if opts.tap == "logits" else 0.0,
        student_channels=ctx.student_channels[opts.tap],
    )
    loss.load_tokens({"mask_token": token})
    return {"maskd": loss}, {"maskd": 1.0}


METHODS: dict[str, Callable[[MethodContext, Any], Built]] = {
    "kd": build_kd,
    "fitnet": build_fitnet,
    "at": build_at,
    "skd": build_skd,
    "ifvd": build_ifvd,
    "cwd": build_cwd,
    "dist": build_dist,
    "cirkd": build_cirkd,
    "dkd": build_dkd,
    "mgd": build_mgd,
    "afdcd": build_afdcd,
    "bpkd": build_bpkd,
    "maskd": build_maskd,
    "apd": build_apd,
}


def build_methods(
    names: list[str], ctx: MethodContext, options: dict[str, dict[str, Any]], weights: dict[str, float]
) -> tuple[dict[str, nn.Module], dict[str, float]]:
    """Losses and weights for the listed methods; ``weights`` (from the config) override the defaults.

    A loss that two methods both bring is built once: by the method of that name when it is listed (an
    explicit ``kd`` or ``cwd`` with its options wins over the KD that APD brings or the CWD that MGD brings),
    else by the first listed. When the copy left out differs from the one kept and comes from a method whose
    options the config sets (e.g. ``apd.kd_temperature`` next to an explicit ``kd``), the config is refused
    in one line: those options would be dropped silently."""
    for key in options:
        if key not in names:
            raise UserError(f"distill.options has an entry for {key!r}, which is not in distill.methods {names}")
    losses: dict[str, nn.Module] = {}
    merged: dict[str, float] = {}
    brought_by: dict[str, str] = {}
    for name in sorted(names, key=lambda n: n != "kd"):  # kd first: the losses' order as before
        check_method(name)
        built, defaults = METHODS[name](ctx, method_options(name, options.get(name)))
        for key, loss in built.items():
            own = set(getattr(loss, "terms", ())) | {key}
            if key in losses:
                replaces = name == key  # the method of that name replaces another's built-in copy
                kept, builder = (loss, name) if replaces else (losses[key], brought_by[key])
                left, left_by = (losses[key], brought_by[key]) if replaces else (loss, name)
                if options.get(left_by) and loss_settings(kept) != loss_settings(left):
                    raise UserError(
                        f"distill.methods {brought_by[key]} and {name} both bring the {key!r} loss; {key!r} is built "
                        f"by {builder}, so the settings that distill.options.{left_by} gives it "
                        f"({loss_settings(left)}) would be dropped; set them on one method only"
                    )
                if not replaces:
                    continue
            losses[key] = loss  # a new loss, or the method of that name replacing another's built-in one
            brought_by[key] = name
            merged.update({k: v for k, v in defaults.items() if k in own})
    merged.update(weights)
    _check_class_score_taps(losses, ctx)
    return losses, merged


def loss_settings(loss: nn.Module) -> dict[str, Any]:
    """A loss module's class and plain settings (numbers, strings, flags, tuples), for telling whether two
    methods bring the same loss."""
    plain = (bool, int, float, str, tuple, type(None))
    found = {k: v for k, v in vars(loss).items() if not k.startswith("_") and k != "training" and isinstance(v, plain)}
    return {"class": type(loss).__name__, **dict(sorted(found.items()))}


CLASS_SCORE_TAPS = ("logits", "aux_logits")


def _check_class_score_taps(losses: dict[str, nn.Module], ctx: MethodContext) -> None:
    """A loss that reads class scores needs ``num_classes`` channels on both sides."""
    for key, loss in losses.items():
        for tap in getattr(loss, "taps", ()):
            if tap not in CLASS_SCORE_TAPS:
                continue
            for side, channels in (("student", ctx.student_channels), ("teacher", ctx.teacher_channels)):
                found = channels.get(tap)
                if found is not None and found != ctx.num_classes:
                    raise UserError(
                        f"{key} reads class scores from the {side} tap {tap!r}, which gives {found} channels, "
                        f"not model.num_classes={ctx.num_classes}; point distill.{side}_taps.{tap} at the classifier"
                    )
