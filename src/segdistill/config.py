"""Experiment configuration: dataclasses are the schema, YAML files hold values, ``key=value`` overrides.

Unknown keys are errors that suggest the closest valid key; values are type-checked.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError


@dataclass
class DataConfig:
    # synthetic (generated if absent) | cityscapes | ade20k | pascal_context | pascal_context_59 | voc_aug | camvid
    dataset: str = "synthetic"
    root: str = "data/synthetic"
    train_split: str = "train"
    val_split: str = "val"
    crop_size: list[int] = field(default_factory=lambda: [128, 128])  # H, W
    scale: list[float] = field(default_factory=lambda: [0.5, 2.0])
    rotate: float = 10.0
    blur_p: float = 0.5
    flip_p: float = 0.5
    batch_size: int = 8
    workers: int = 0


@dataclass
class ModelConfig:
    head: str = "pspnet"
    backbone: str = "resnet18d"
    num_classes: int = 19
    output_stride: int = 8
    pretrained: bool | str = False
    head_channels: int | None = None
    ppm_channels: int | None = None
    aux: bool = True
    dropout: float = 0.1
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)  # extra timm.create_model arguments
    weights: str | None = None  # initial weights: a checkpoint/.safetensors path, or "shipped:<name>"


@dataclass
class TrainConfig:
    iters: int = 300
    lr: float = 0.01  # backbone; new modules get lr * head_lr_mult
    head_lr_mult: float = 10.0
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    aux_weight: float = 0.4
    log_interval: int = 10
    eval_interval: int = 0  # 0: evaluate once at the end
    checkpoint_interval: int = 100  # also save checkpoints/last.pt every N steps (0: only at evaluations)
    nonfinite: str = "stop"  # a non-finite loss: stop (naming step and term) | skip the batch
    max_skips: int = 20  # with nonfinite=skip: stop after this many skipped batches
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    deterministic: bool = True
    amp: str = "none"  # none | bf16 (CPU or GPU) | fp16 (GPU, with a gradient scaler)
    channels_last: bool = False
    sync_bn: bool = True  # under torchrun: BatchNorm statistics over all ranks (SyncBatchNorm; an all-reduce BN on CPU)
    dist_timeout: float = 600.0  # seconds any collective may wait for the other processes


@dataclass
class EvalConfig:
    mode: str = "whole"  # whole | slide
    crop_size: list[int] | None = None  # slide window (H, W); defaults to data.crop_size
    stride: list[int] | None = None  # slide stride; defaults to 2/3 of the window
    scales: list[float] = field(default_factory=lambda: [1.0])
    flip: bool = False
    base_size: int | None = None  # resize the long side to base_size x scale first (PSPNet-style test)
    batch_size: int = 8


@dataclass
class TeacherConfig:
    head: str = "pspnet"
    backbone: str = "resnet18d"
    num_classes: int = 19
    output_stride: int = 8
    head_channels: int | None = None
    ppm_channels: int | None = None
    aux: bool = True
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None


@dataclass
class DistillConfig:
    methods: list[str] = field(default_factory=list)
    weights: dict[str, float] = field(default_factory=dict)
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    student_taps: dict[str, str] = field(default_factory=dict)
    teacher_taps: dict[str, str] = field(default_factory=dict)


@dataclass
class Config:
    name: str = "run"
    seed: int = 0
    out_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    teacher: TeacherConfig | None = None
    distill: DistillConfig | None = None

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name


def _optional_dataclass(annotation: Any) -> type | None:
    """``X`` for an annotation ``X | None`` where ``X`` is a dataclass (an optional section), else None."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(options) == 1 and dataclasses.is_dataclass(options[0]):
            return options[0]
    return None


def _closest(key: str, options: list[str], prefix: str = "") -> str:
    match = difflib.get_close_matches(key, options, n=1, cutoff=0.5)
    if match:
        return f" (did you mean {prefix + match[0]!r}?)"
    return f" (valid keys under {prefix.rstrip('.') or 'the top level'}: {', '.join(options)})"


def _check_type(value: Any, annotation: Any, where: str) -> Any:
    """Check ``value`` against a type annotation; ints are accepted where floats are expected."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(annotation):
            try:
                return _check_type(value, option, where)
            except UserError as exc:
                errors.append(str(exc))
        names = " or ".join(getattr(a, "__name__", str(a)) for a in typing.get_args(annotation))
        raise UserError(f"config key {where!r}: expected {names}, got {value!r}")
    if annotation is type(None):
        if value is None:
            return None
        raise UserError(f"config key {where!r}: expected null, got {value!r}")
    if annotation is Any:
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise UserError(f"config key {where!r}: expected a list, got {value!r}")
        (item,) = typing.get_args(annotation)
        return [_check_type(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"config key {where!r}: expected a mapping, got {value!r}")
        _, item = typing.get_args(annotation)
        return {str(k): _check_type(v, item, f"{where}.{k}") for k, v in value.items()}
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"config key {where!r}: expected a number, got {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"config key {where!r}: expected an integer, got {value!r}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise UserError(f"config key {where!r}: expected true or false, got {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise UserError(f"config key {where!r}: expected a string, got {value!r}")
        return value
    return value


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    if not isinstance(values, dict):
        raise UserError(f"config section {prefix.rstrip('.') or 'root'!r} must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in names:
            raise UserError(f"unknown config key {prefix + key!r}{_closest(key, names, prefix)}")
        annotation = hints[key]
        sub = _optional_dataclass(annotation)
        if dataclasses.is_dataclass(annotation):
            kwargs[key] = _build(annotation, value or {}, f"{prefix}{key}.")
        elif sub is not None:
            kwargs[key] = None if value is None else _build(sub, value, f"{prefix}{key}.")
        else:
            kwargs[key] = _check_type(value, annotation, prefix + key)
    return cls(**kwargs)


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise UserError(f"override {text!r} must look like key=value (e.g. train.iters=100)")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def _merge(base: dict[str, Any], path: list[str], value: Any) -> None:
    node = base
    for part in path[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[path[-1]] = value


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = (), schema: type = Config) -> Any:
    """Read a YAML config (safe loader) and apply ``key=value`` overrides (``train.iters=100``).

    ``schema``: the root dataclass (``Config`` for segmentation; detection passes its own)."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            raise UserError(f"config file {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8 YAML") from exc
        except yaml.YAMLError as exc:
            line = getattr(getattr(exc, "problem_mark", None), "line", None)
            at = f" (line {line + 1})" if line is not None else ""
            raise UserError(f"config file {path} is not valid YAML{at}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise UserError(f"config file {path} must hold a mapping at the top level")
        values = loaded or {}
    for text in overrides:
        keys, value = _parse_override(text)
        _merge(values, keys, value)
    return _build(schema, values, "")


def config_to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def save_config(config: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
