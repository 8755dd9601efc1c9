"""The schema of a detection config (``segdistill detect train|distill|eval CONFIG``).

Same conventions as segmentation configs (:mod:`segdistill.config`): YAML values, ``key=value``
overrides, unknown keys rejected with the closest valid key. The ``train`` section is segmentation's
(SGD, poly schedule, intervals, resume, divergence guard) plus a linear warm-up, which detectors
trained from scratch need.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import TrainConfig


@dataclass
class DetectionDataConfig:
    dataset: str = "synthetic"  # synthetic (generated and converted if absent) | coco (any COCO-layout data)
    root: str = "data/synthetic"
    train_ann: str = "annotations/instances_train.json"  # relative to root (or absolute)
    val_ann: str = "annotations/instances_val.json"
    train_images: str = ""  # the folder the train file_names are relative to (relative to root), e.g. train2017
    val_images: str = ""
    flip_p: float = 0.5
    batch_size: int = 4
    workers: int = 0


@dataclass
class DetectorConfig:
    arch: str = "faster_rcnn"  # faster_rcnn | mask_rcnn
    backbone: str = "resnet18"  # resnet18 | resnet34 | resnet50 | resnet101 | mobilenet_v3_large
    num_classes: int | None = None  # categories + background; null: from the annotation file
    fpn_channels: int = 256
    norm: str = "bn"  # bn (trainable, from scratch) | frozen_bn (torchvision's default for pretrained backbones)
    min_size: int = 128  # torchvision's resize: shorter side
    max_size: int = 256  # longer side at most
    anchor_sizes: list[int] | None = None  # one per FPN level; null: 16, 32, ... (half of torchvision's)
    representation_size: int = 1024  # box head width
    options: dict[str, Any] = field(default_factory=dict)  # other FasterRCNN/MaskRCNN constructor arguments
    weights: str | None = None  # initial weights (a checkpoint or .safetensors); required for a teacher


@dataclass
class DetectionTrainConfig(TrainConfig):
    lr: float = 0.02
    head_lr_mult: float = 1.0  # torchvision's detection recipe: one learning rate
    warmup_iters: int = 100  # linear warm-up from warmup_factor x lr (torchvision: 1000 iters, 0.001)
    warmup_factor: float = 0.001
    checkpoint_interval: int = 50


@dataclass
class DetectionDistillConfig:
    methods: list[str] = field(default_factory=lambda: ["apd"])
    weights: dict[str, float] = field(default_factory=dict)  # apd (all terms), apd_kl, apd_align
    options: dict[str, dict[str, Any]] = field(default_factory=dict)  # options.apd: see DetectionAPDLoss


@dataclass
class DetectionConfig:
    name: str = "detect"
    seed: int = 0
    out_dir: str = "runs"
    data: DetectionDataConfig = field(default_factory=DetectionDataConfig)
    model: DetectorConfig = field(default_factory=DetectorConfig)
    train: DetectionTrainConfig = field(default_factory=DetectionTrainConfig)
    teacher: DetectorConfig | None = None
    distill: DetectionDistillConfig | None = None

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name


def load_detection_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> DetectionConfig:
    from ..config import load_config

    return load_config(path, overrides, schema=DetectionConfig)
