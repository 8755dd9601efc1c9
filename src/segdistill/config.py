"""Experiment configuration: dataclasses are the schema, YAML files hold values, ``key=value`` overrides.

A recipe may name another as ``base: <path>`` (relative to it): the base is read first, the file's
values merged over it (mappings key by key), then the overrides. Every value is checked when the
schema is read, before any work: unknown keys (with the closest valid key), types, and what each key
allows (:func:`~segdistill.base.schema.setting`), each failure one line naming the key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .base.method_options import check_method, method_options
from .base.schema import (
    AtLeast,
    Between,
    ListOf,
    Matches,
    NameIn,
    NonEmptyText,
    NonNegative,
    OneOf,
    Positive,
    Probability,
    ValuesOf,
    apply_overrides,
    build_section,
    read_recipe,
    setting,
)
from .data.datasets import DATASETS
from .engine.inference import WINDOW_MERGES
from .errors import UserError
from .models.input_norm import CHANNEL_ORDERS, IMAGENET_MEAN, IMAGENET_STD
from .models.sources import SOURCES

AMP_MODES = ("none", "bf16", "fp16")
NONFINITE_POLICIES = ("stop", "skip")
EVAL_MODES = ("whole", "slide")
OUTPUT_STRIDES = (8, 16, 32)
DEVICE = Matches(r"auto|cpu|mps|(cuda|xpu)(:\d+)?", "auto, cpu, mps, cuda or cuda:N")
SIZE_PAIR = ListOf(Positive(), length=2)  # H, W in pixels


@dataclass
class DataConfig:
    # a name in data.datasets.DATASETS: synthetic (generated if absent), cityscapes, ade20k, pascal_context,
    # pascal_context_59, voc_aug, camvid, or a dataset the user registered
    dataset: str = setting("synthetic", NameIn(DATASETS))
    root: str = setting("data/synthetic", NonEmptyText())
    train_split: str = setting("train", NonEmptyText())
    val_split: str = setting("val", NonEmptyText())
    crop_size: list[int] = setting(check=SIZE_PAIR, factory=lambda: [128, 128])  # H, W
    scale: list[float] = setting(check=ListOf(Positive(), length=2, ordered=True), factory=lambda: [0.5, 2.0])
    rotate: float = setting(10.0, Between(0.0, 180.0))  # degrees, uniform in [-rotate, rotate]
    blur_p: float = setting(0.5, Probability())
    flip_p: float = setting(0.5, Probability())
    batch_size: int = setting(8, Positive())
    workers: int = setting(0, NonNegative())
    # keep every decoded image and label in memory after its first read (each DataLoader worker its own
    # copy): for small datasets that fit in memory (the embedded default: about 100 MB); not Cityscapes
    cache: bool = False


@dataclass
class ModelConfig:
    """A segmentation model: the student (``model:``) or the teacher (``teacher:``), one schema.

    ``source`` says who builds it (:mod:`segdistill.models.sources`): ``segdistill`` (``head`` on a timm
    ``backbone``, the keys from ``head`` to ``backbone_kwargs``), or another library's model named by
    ``arch`` with its keyword arguments in ``kwargs``: a ``torchvision`` segmentation builder, an
    ``smp`` architecture, an ``hf`` transformers class (or ``pretrained``: a save_pretrained folder),
    a ``python`` callable ``package.module:callable``. ``num_classes`` and ``weights`` apply to all.

    ``input_mean``, ``input_std`` (0-255 pixel units, in the model's channel order) and
    ``input_channels`` (``rgb`` | ``bgr``) are the normalisation the model's weights were trained
    with (a converted zoo checkpoint's own). The data pipeline always gives ImageNet-normalised RGB;
    a model section with other values re-normalises its input to them inside the model, so it cannot
    be evaluated or distilled with the wrong one."""

    source: str = setting("segdistill", OneOf(SOURCES))
    arch: str | None = setting(None, NonEmptyText())  # the builder / architecture / class / callable
    kwargs: dict[str, Any] = setting(factory=dict)  # its keyword arguments (transformers: config keys)
    head: str = setting("pspnet", NonEmptyText())
    backbone: str = setting("resnet18d", NonEmptyText())
    num_classes: int = setting(19, Positive())
    output_stride: int = setting(8, OneOf(OUTPUT_STRIDES))
    pretrained: bool | str = False
    head_channels: int | None = setting(None, Positive())
    ppm_channels: int | None = setting(None, Positive())
    aux: bool = True
    dropout: float = setting(0.1, Between(0.0, 1.0, open_high=True))
    backbone_kwargs: dict[str, Any] = setting(factory=dict)  # extra timm.create_model arguments
    # the layout details in which the model zoos differ (segdistill.models.zoo):
    align_corners: bool = False  # bilinear resizes in the head and of the logits (semseg/APD/CIRKD: true)
    contract_dilation: bool = True  # first block of a dilated stage at the previous dilation (semseg: false)
    aspp_projection: bool = True  # deeplabv3: a 1x1 projection after ASPP (torchvision, CIRKD; mmseg: false)
    # initial weights: a checkpoint/.safetensors path, "shipped:<name>", or a zoo checkpoint
    # "mmseg:<path>" | "apd:<path>" | "cirkd:<path>" converted as it is loaded
    weights: str | None = None
    input_mean: list[float] = setting(check=ListOf(Between(0.0, 255.0), length=3), factory=lambda: list(IMAGENET_MEAN))
    input_std: list[float] = setting(check=ListOf(Positive(), length=3), factory=lambda: list(IMAGENET_STD))
    input_channels: str = setting("rgb", OneOf(CHANNEL_ORDERS))

    def validate(self, prefix: str) -> None:
        """The keys of one source only: ``arch``/``kwargs`` name another library's model; the
        segdistill keys (``head`` ... ``backbone_kwargs``) stay at their defaults for other sources."""
        if self.source == "segdistill":
            for name in ("arch", "kwargs"):
                if getattr(self, name):
                    raise UserError(
                        f"config key {prefix + name!r} applies to the sources {', '.join(SOURCES[1:])}; "
                        f"set {prefix}source or remove it (source segdistill uses {prefix}head and {prefix}backbone)"
                    )
            return
        if not self.arch and not (self.source == "hf" and isinstance(self.pretrained, str)):
            what = ARCH_HELP[self.source]
            raise UserError(f"config key {prefix + 'arch'!r} is required with {prefix}source={self.source} ({what})")
        defaults = ModelConfig()
        for name in SEGDISTILL_ONLY:
            if getattr(self, name) != getattr(defaults, name):
                raise UserError(
                    f"config key {prefix + name!r} applies only to {prefix}source=segdistill; for "
                    f"source {self.source} put the library's arguments in {prefix}kwargs"
                )
        if self.pretrained is not False and self.source != "hf":
            raise UserError(
                f"config key {prefix + 'pretrained'!r} applies to sources segdistill (timm weights) and hf "
                f"(a folder or hub id); for source {self.source} ask the library for weights in {prefix}kwargs"
            )


SEGDISTILL_ONLY = (
    "head",
    "backbone",
    "output_stride",
    "head_channels",
    "ppm_channels",
    "aux",
    "dropout",
    "backbone_kwargs",
    "align_corners",
    "contract_dilation",
    "aspp_projection",
)
ARCH_HELP = {
    "torchvision": "a torchvision.models.segmentation builder, e.g. deeplabv3_resnet101",
    "smp": "a segmentation_models_pytorch architecture, e.g. Unet",
    "hf": "a transformers class, e.g. SegformerForSemanticSegmentation, or pretrained: a save_pretrained folder",
    "python": "package.module:callable returning an nn.Module",
}


OPTIMIZERS = ("sgd", "adamw")


@dataclass
class TrainConfig:
    iters: int = setting(300, Positive())
    # sgd: SGD with momentum (CNN recipes); adamw: AdamW, betas (0.9, 0.999) (SegFormer / transformer recipes)
    optimizer: str = setting("sgd", OneOf(OPTIMIZERS))
    lr: float = setting(0.01, Positive())  # backbone; new modules get lr * head_lr_mult
    head_lr_mult: float = setting(10.0, Positive())
    momentum: float = setting(0.9, Between(0.0, 1.0, open_high=True))  # sgd only
    weight_decay: float = setting(1e-4, NonNegative())
    poly_power: float = setting(0.9, NonNegative())
    aux_weight: float = setting(0.4, NonNegative())
    log_interval: int = setting(10, Positive())
    eval_interval: int = setting(0, NonNegative())  # 0: evaluate once at the end
    checkpoint_interval: int = setting(
        100, NonNegative()
    )  # also save checkpoints/last.pt every N steps (0: only at evaluations)
    nonfinite: str = setting(
        "stop", OneOf(NONFINITE_POLICIES)
    )  # a non-finite loss: stop (naming step and term) | skip the batch
    max_skips: int = setting(20, Positive())  # with nonfinite=skip: stop after this many skipped batches
    device: str = setting("auto", DEVICE)  # auto | cpu | cuda | cuda:N
    deterministic: bool = True
    amp: str = setting("none", OneOf(AMP_MODES))  # none | bf16 (CPU or GPU) | fp16 (GPU, with a gradient scaler)
    channels_last: bool = False
    sync_bn: bool = True  # under torchrun: BatchNorm statistics over all ranks (SyncBatchNorm; an all-reduce BN on CPU)
    dist_timeout: float = setting(600.0, Positive())  # seconds any collective may wait for the other processes
    # also log scalars and prediction panels to <run_dir>/tensorboard when the tensorboard package is installed
    tensorboard: bool = True


@dataclass
class EvalConfig:
    mode: str = setting("whole", OneOf(EVAL_MODES))  # whole | slide
    crop_size: list[int] | None = setting(None, SIZE_PAIR)  # slide window (H, W); defaults to data.crop_size
    stride: list[int] | None = setting(None, SIZE_PAIR)  # slide stride; defaults to 2/3 of the window
    scales: list[float] = setting(check=ListOf(Positive(), min_length=1), factory=lambda: [1.0])
    flip: bool = False
    base_size: int | None = setting(
        None, Positive()
    )  # resize the long side to base_size x scale first (PSPNet-style test)
    # [long, short]: resize each image by min(long / its long side, short / its short side) first,
    # mmsegmentation's Resize(img_scale, keep_ratio=True) (ADE20K [2048, 512], PASCAL-Context [520, 520])
    keep_ratio: list[int] | None = setting(None, SIZE_PAIR)
    # slide windows merged as mmsegmentation does (logits averaged) or as semseg / the APD release do
    # (softmax per window, flip inside each window, centred padding)
    window_merge: str = setting("logits", OneOf(WINDOW_MERGES))
    batch_size: int = setting(8, Positive())

    def validate(self, prefix: str) -> None:
        if self.keep_ratio and self.base_size:
            raise UserError(
                f"config keys {prefix}keep_ratio and {prefix}base_size both resize the image; set one of them"
            )
        if self.window_merge == "softmax" and self.mode != "slide":
            raise UserError(
                f"config key {prefix}window_merge=softmax merges sliding windows, but {prefix}mode={self.mode}; "
                f"set {prefix}mode=slide or {prefix}window_merge=logits"
            )


@dataclass
class DistillConfig:
    methods: list[str] = setting(factory=list)  # names from segdistill.base.method_options.METHOD_NAMES
    weights: dict[str, float] = setting(check=ValuesOf(NonNegative()), factory=dict)
    options: dict[str, dict[str, Any]] = setting(factory=dict)  # per method: its options dataclass's keys
    student_taps: dict[str, str] = setting(factory=dict)
    teacher_taps: dict[str, str] = setting(factory=dict)

    def validate(self, prefix: str) -> None:
        """Method names from the one list; each method's options through its dataclass (also for a
        method not in ``methods``: a recipe run with ``distill.methods=[]`` keeps its options)."""
        for i, name in enumerate(self.methods):
            check_method(name, f"{prefix}methods[{i}]")
        for name, values in self.options.items():  # (options of a method not listed are kept, unused)
            check_method(name, f"{prefix}options.{name}")
            method_options(name, values)


@dataclass
class RunConfig:
    """The keys that name a run (its folder ``<out_dir>/<name>``) and seed it; every job's root schema
    starts with them."""

    name: str = setting("run", NonEmptyText())
    seed: int = setting(0, AtLeast(0))
    out_dir: str = setting("runs", NonEmptyText())

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name


@dataclass
class Config(RunConfig):
    data: DataConfig = setting(factory=DataConfig)
    model: ModelConfig = setting(factory=ModelConfig)
    train: TrainConfig = setting(factory=TrainConfig)
    eval: EvalConfig = setting(factory=EvalConfig)
    teacher: ModelConfig | None = None  # the same schema as model:
    distill: DistillConfig | None = None


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = (), schema: type = Config) -> Any:
    """Read a YAML config (safe loader) with its ``base:`` chain, then apply ``key=value``
    overrides (``train.iters=100``): base first, then the file, then the overrides.

    ``schema``: the root dataclass (``Config`` for segmentation; detection passes its own)."""
    values = read_recipe(path) if path is not None else {}
    apply_overrides(values, overrides)
    return build_section(schema, values, "")


def with_current_defaults(saved: dict[str, Any], schema: type = Config) -> dict[str, Any]:
    """A config saved by an earlier version, read through today's ``schema``: keys added since then
    appear at their defaults (which reproduce the earlier behaviour), so comparing it with a config
    of today shows only real changes. A saved config the schema no longer reads is returned as is."""
    try:
        return config_to_dict(build_section(schema, saved, ""))
    except UserError:
        return saved


def config_to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def save_config(config: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
