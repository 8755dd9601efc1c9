"""The schema of a detection config (``segdistill detect train|distill|eval CONFIG``).

Same conventions as segmentation configs (:mod:`segdistill.config`): YAML values, ``key=value``
overrides, unknown keys rejected with the closest valid key. The ``train`` section is segmentation's
(SGD, poly schedule, intervals, resume, divergence guard) plus a linear warm-up, which detectors
trained from scratch need.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..base.method_options import APD_SCOPES
from ..base.schema import (
    AtLeast,
    Between,
    ListOf,
    NonEmptyText,
    NonNegative,
    OneOf,
    Positive,
    Probability,
    ValuesOf,
    build_section,
    setting,
)
from ..config import RunConfig, TrainConfig, load_config
from ..errors import UserError
from .apd import TARGETS
from .models import ARCHS, BACKBONES, NORMS

DETECTION_DATASETS = ("synthetic", "coco")
DETECTION_METHODS = ("apd",)


@dataclass
class DetectionDataConfig:
    dataset: str = setting(
        "synthetic", OneOf(DETECTION_DATASETS)
    )  # synthetic (generated and converted if absent) | coco (any COCO-layout data)
    root: str = setting("data/synthetic", NonEmptyText())
    train_ann: str = setting("annotations/instances_train.json", NonEmptyText())  # relative to root (or absolute)
    val_ann: str = setting("annotations/instances_val.json", NonEmptyText())
    train_images: str = ""  # the folder the train file_names are relative to (relative to root), e.g. train2017
    val_images: str = ""
    flip_p: float = setting(0.5, Probability())
    batch_size: int = setting(4, Positive())
    workers: int = setting(0, NonNegative())


@dataclass
class DetectorConfig:
    arch: str = setting("faster_rcnn", OneOf(tuple(ARCHS)))  # faster_rcnn | mask_rcnn
    backbone: str = setting(
        "resnet18", OneOf(BACKBONES)
    )  # resnet18 | resnet34 | resnet50 | resnet101 | mobilenet_v3_large
    num_classes: int | None = setting(None, AtLeast(2))  # categories + background; null: from the annotation file
    fpn_channels: int = setting(256, Positive())
    norm: str = setting(
        "bn", OneOf(tuple(NORMS))
    )  # bn (trainable, from scratch) | frozen_bn (torchvision's default for pretrained backbones)
    min_size: int = setting(128, Positive())  # torchvision's resize: shorter side
    max_size: int = setting(256, Positive())  # longer side at most
    anchor_sizes: list[int] | None = setting(
        None, ListOf(Positive(), min_length=1)
    )  # one per FPN level; null: 16, 32, ... (half of torchvision's)
    representation_size: int = setting(1024, Positive())  # box head width
    options: dict[str, Any] = setting(factory=dict)  # other FasterRCNN/MaskRCNN constructor arguments
    weights: str | None = None  # initial weights (a checkpoint or .safetensors); required for a teacher

    def validate(self, prefix: str) -> None:
        if self.min_size > self.max_size:
            raise UserError(
                f"config key '{prefix}min_size': {self.min_size} is larger than {prefix}max_size ({self.max_size}); "
                "allowed: min_size <= max_size"
            )


@dataclass
class DetectionTrainConfig(TrainConfig):
    lr: float = setting(0.02, Positive())
    head_lr_mult: float = setting(1.0, Positive())  # torchvision's detection recipe: one learning rate
    warmup_iters: int = setting(
        100, NonNegative()
    )  # linear warm-up from warmup_factor x lr (torchvision: 1000 iters, 0.001)
    warmup_factor: float = setting(0.001, Between(0.0, 1.0))
    checkpoint_interval: int = setting(50, NonNegative())


@dataclass
class DetectionAPDOptions:
    """``distill.options.apd`` of a detection distillation (see DetectionAPDLoss and APDLoss)."""

    target: str = setting("masks", OneOf(TARGETS))  # the label map: instance masks | boxes
    adapter: bool = True
    adapter_channels: int = setting(512, Positive())
    scale: float = setting(10.0, Positive())
    scope: str = setting("batch", OneOf(APD_SCOPES))
    teacher_adapter_lr: float = setting(1e-5, Positive())


@dataclass
class DetectionDistillConfig:
    methods: list[str] = setting(check=ListOf(OneOf(DETECTION_METHODS), min_length=1), factory=lambda: ["apd"])
    weights: dict[str, float] = setting(
        check=ValuesOf(NonNegative()), factory=dict
    )  # apd (all terms), apd_kl, apd_align
    options: dict[str, dict[str, Any]] = setting(factory=dict)  # options.apd: DetectionAPDOptions

    def validate(self, prefix: str) -> None:
        for name, values in self.options.items():
            if name not in DETECTION_METHODS:
                raise UserError(
                    f"config key '{prefix}options.{name}': no detection method {name!r}; "
                    f"allowed: {', '.join(DETECTION_METHODS)}"
                )
            build_section(DetectionAPDOptions, values or {}, f"{prefix}options.{name}.")


@dataclass
class DetectionConfig(RunConfig):
    name: str = setting("detect", NonEmptyText())
    data: DetectionDataConfig = setting(factory=DetectionDataConfig)
    model: DetectorConfig = setting(factory=DetectorConfig)
    train: DetectionTrainConfig = setting(factory=DetectionTrainConfig)
    teacher: DetectorConfig | None = None
    distill: DetectionDistillConfig | None = None


def load_detection_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> DetectionConfig:
    return load_config(path, overrides, schema=DetectionConfig)
