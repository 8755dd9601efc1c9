"""The distillation methods by name, each with its options schema: the one list of methods.

:data:`METHOD_OPTIONS` maps a method's name (what ``distill.methods`` lists) to the dataclass of its
``distill.options.<method>`` keys, defaults at the method's reference settings. The command line's
choices, ``bench``'s default methods, the loss builders (:mod:`segdistill.distill.methods`, which a
test keeps to exactly these names), the tests' parametrisation and the README's methods table all
derive from it. Light (no torch): the command line reads it while it builds its parser.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import UserError
from .schema import Between, ListOf, NonEmptyText, NonNegative, OneOf, Positive, build_section, did_you_mean, setting

KD_REDUCTIONS = ("mean", "pixel")
APD_SCOPES = ("batch", "image", "global")


@dataclass
class KDOptions:
    """Pixel-wise logit KD (Hinton et al.) as the APD release runs it."""

    temperature: float = setting(1.0, Positive())
    reduction: str = setting("mean", OneOf(KD_REDUCTIONS))  # mean: torch 'mean' (release) | pixel: per-pixel KL
    upsample: bool = True  # logits upsampled to the label size first (release); false: at the feature grid
    standardize: bool = False  # logit standardisation (Sun et al., CVPR 2024): z-score each pixel's logits first


@dataclass
class FitNetOptions:
    with_kd: bool = True


@dataclass
class ATOptions:
    with_kd: bool = True
    p: float = setting(2.0, Positive())
    taps: list[str] = setting(check=ListOf(NonEmptyText(), min_length=1), factory=lambda: ["feat"])


@dataclass
class SKDOptions:
    with_kd: bool = True
    pool: int = setting(2, Positive())  # pair-wise nodes: pool x pool max-pooled cells
    adversarial: bool = True
    d_weight: float = setting(0.1, NonNegative())
    d_lr: float = setting(4e-4, Positive())


@dataclass
class IFVDOptions:
    with_kd: bool = True
    adversarial: bool = True
    d_weight: float = setting(0.1, NonNegative())
    d_lr: float = setting(4e-4, Positive())


@dataclass
class CWDOptions:
    temperature: float = setting(4.0, Positive())
    feature: bool = False  # add the CIRKD codebase's feature term (weight 50)


@dataclass
class DISTOptions:
    beta: float = setting(1.0, NonNegative())
    gamma: float = setting(1.0, NonNegative())
    tau: float = setting(1.0, Positive())
    aux_weight: float = setting(0.4, NonNegative())
    standardize: bool = False  # z-score each pixel's logits first (not in the DIST or logit-std references)


@dataclass
class CIRKDOptions:
    with_kd: bool = True
    temperature: float = setting(0.1, Positive())
    pool: int = setting(1, Positive())
    memory: bool = True
    pixel_memory: int = setting(20000, Positive())
    region_memory: int = setting(2000, Positive())
    pixel_contrast: int = setting(4096, Positive())
    region_contrast: int = setting(1024, Positive())
    pixels_per_image: int = setting(16, Positive())


@dataclass
class DKDOptions:
    """DKD per pixel (mdistiller ``DKD.py``; alpha 1, beta 2, T 1: the one segmentation setting found,
    ZaberKo/seg-gdkd, and mdistiller's ImageNet one)."""

    alpha: float = setting(1.0, NonNegative())  # target-class term (TCKD)
    beta: float = setting(2.0, NonNegative())  # non-target-class term (NCKD)
    temperature: float = setting(1.0, Positive())
    upsample: bool = False  # false: labels resized to the logits' grid (seg-gdkd); true: logits to the labels'
    standardize: bool = False  # logit standardisation (its reference: T 2, alpha and beta x 9)


@dataclass
class MGDOptions:
    """MGD (yzd-v/MGD seg configs): mask 75 % of the student's positions, generate the teacher's feature."""

    mask_ratio: float = setting(0.75, Between(0.0, 1.0, open_high=True))
    with_cwd: bool = True  # the release's logit term: CWD on logits, T 4, weight 3


AFDCD_MASKS = ("random", "center")


@dataclass
class AfDCDOptions:
    """Af-DCD (OSVAI/Af-DCD ``losses/ocmgd.py`` and its Cityscapes scripts)."""

    mask_ratio: float = setting(0.75, Between(0.0, 1.0, open_high=True))
    mask: str = setting("random", OneOf(AFDCD_MASKS))
    enhanced_projector: bool = False
    tau: float = setting(0.07, Positive())
    groups: int = setting(16, Positive())  # channel groups (must divide the teacher's channels)
    pool: int = setting(4, NonNegative())  # max-pool before the contrast (0 or 1: none)
    patch: int = setting(4, Positive())  # windows of patch x patch pooled positions
    windows_per_chunk: int | None = setting(32, Positive())  # bounds CUDA's cdist backward buffer; null: all
    max_grad_norm: float | None = setting(15.0, Positive())  # the release clips the loss modules' gradients
    with_kd: bool = True  # the release's KD: T 1, per pixel at the logits' grid, weight 1


@dataclass
class BPKDOptions:
    """BPKD (no training code released; reconstructed from the paper's pipeline as three
    re-implementations agree: edge 50, body 20, alpha 2, 7x7 trimap, T 1)."""

    kernel_size: int = setting(7, Positive())  # the trimap's square, in label pixels (odd)
    edge_temperature: float = setting(1.0, Positive())
    body_temperature: float = setting(1.0, Positive())
    edge_alpha: float = setting(2.0, NonNegative())
    mask_logits: bool = True  # multiply the logits by the edge mask before the edge term's softmax


MASKD_TAPS = ("logits", "feat")


@dataclass
class MasKDOptions:
    """MasKD (hunto/MasKD ``segmentation/``): stage 2 distils through receptive tokens that stage 1
    (``segdistill maskd-tokens``) learned on the frozen teacher."""

    # stage 1's output: its run's checkpoints/last.pt (or any file holding mask_token N x C)
    tokens: str | None = setting(None, NonEmptyText())
    num_tokens: int = setting(8, Positive())
    tap: str = setting("logits", OneOf(MASKD_TAPS))  # the release masks the logits; feat: our extension
    aux_weight: float = setting(0.4, NonNegative())  # the same masks on the auxiliary logits (release 0.4)
    dice_weight: float = setting(1.0, NonNegative())  # stage 1: task CE + dice_weight x mask diversity


@dataclass
class APDOptions:
    scope: str = setting("batch", OneOf(APD_SCOPES))
    # images per prototype pool (scope batch): the release's images per GPU; null: the whole per-process batch
    pool_size: int | None = setting(None, Positive())
    adapter: bool = True
    adapter_channels: int = setting(512, Positive())
    scale: float = setting(10.0, Positive())
    teacher_adapter_lr: float = setting(1e-5, Positive())
    with_kd: bool = True
    kd_temperature: float = setting(1.0, Positive())

    def validate(self, prefix: str) -> None:
        """``pool_size`` splits a batch into pools, so it goes with ``scope: batch`` only."""
        if self.pool_size is not None and self.scope != "batch":
            raise UserError(
                f"config key '{prefix}pool_size': {self.pool_size} applies to scope batch only, not scope "
                f"{self.scope!r} ({prefix}scope); allowed: null with scope image or global"
            )


# In the order bench runs them (after the baseline) and the README lists them.
METHOD_OPTIONS: dict[str, type] = {
    "kd": KDOptions,
    "fitnet": FitNetOptions,
    "at": ATOptions,
    "skd": SKDOptions,
    "ifvd": IFVDOptions,
    "cwd": CWDOptions,
    "dist": DISTOptions,
    "cirkd": CIRKDOptions,
    "dkd": DKDOptions,
    "mgd": MGDOptions,
    "afdcd": AfDCDOptions,
    "bpkd": BPKDOptions,
    "maskd": MasKDOptions,
    "apd": APDOptions,
}
METHOD_NAMES: tuple[str, ...] = tuple(METHOD_OPTIONS)
BENCH_METHODS: tuple[str, ...] = ("baseline", *METHOD_NAMES)  # baseline: the student trained alone


def check_method(name: str, key: str = "distill.methods") -> None:
    """Refuse a method name that is not in :data:`METHOD_NAMES` (one line, closest name)."""
    if name not in METHOD_OPTIONS:
        raise UserError(
            f"config key {key!r}: unknown distillation method {name!r}{did_you_mean(name, METHOD_NAMES, 0.5)}; "
            f"allowed: {', '.join(METHOD_NAMES)}"
        )


def method_options(name: str, values: dict[str, Any] | None) -> Any:
    """The options dataclass of method ``name`` from the ``distill.options.<name>`` mapping, every key
    checked (unknown keys with the closest valid one, types, allowed values)."""
    check_method(name)
    return build_section(METHOD_OPTIONS[name], values or {}, f"distill.options.{name}.")
