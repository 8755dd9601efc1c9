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
from .schema import ListOf, NonEmptyText, NonNegative, OneOf, Positive, build_section, did_you_mean, setting

KD_REDUCTIONS = ("mean", "pixel")
APD_SCOPES = ("batch", "image", "global")


@dataclass
class KDOptions:
    """Pixel-wise logit KD (Hinton et al.) as the APD release runs it."""

    temperature: float = setting(1.0, Positive())
    reduction: str = setting("mean", OneOf(KD_REDUCTIONS))  # mean: torch 'mean' (release) | pixel: per-pixel KL
    upsample: bool = True  # logits upsampled to the label size first (release); false: at the feature grid


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
