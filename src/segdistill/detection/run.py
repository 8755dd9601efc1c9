"""The jobs behind ``segdistill detect train|distill|eval``: the segmentation trainer (SGD, poly
schedule with warm-up, progress, ``metrics.jsonl``, atomic checkpoints, exact resume, divergence
guard) driving a torchvision detector, evaluated with the COCO metrics."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from rich.console import Console
from torch import nn
from torch.utils.data import DataLoader

from ..data.datasets import SyntheticDataset
from ..data.sampling import EpochBatchSampler, SeededSamples
from ..engine.builders import evaluation_generator, load_weights
from ..engine.checkpoint import prepare_run_dir, sha256
from ..engine.distributed import DistInfo, broadcast_buffers, init_distributed
from ..engine.job import Loaders, Process, run_job
from ..engine.run import sync_batchnorm
from ..engine.runtime import resolve_device
from ..engine.stopping import worker_ignores_stop_signal
from ..engine.trainer import Trainer, poly_schedule, with_warmup
from ..errors import UserError
from ..models import count_parameters
from .apd import DetectionAPDLoss, pair_levels
from .coco import write_coco
from .config import DetectionConfig
from .dataset import CocoDetection, collate_detection
from .evaluate import describe, evaluate_detector
from .models import detector_from_config, fpn_shapes
from .task import DetectionDistiller, DetectionSupervisedTask


class DetectionTrainer(Trainer):
    """The segmentation :class:`~segdistill.engine.trainer.Trainer` with detection batches
    (lists of images and target dicts) and COCO evaluation (``best.pt`` = highest box AP)."""

    score_key = "bbox_AP"
    describe = staticmethod(describe)

    def __init__(self, *args, gt_data: dict, category_ids: list[int], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gt_data = gt_data
        self.category_ids = category_ids

    def _inputs(self, batch: tuple) -> tuple[tuple, int]:
        images, targets = batch
        images = [image.to(self.device, non_blocking=True) for image in images]
        targets = [{k: v.to(self.device, non_blocking=True) for k, v in t.items()} for t in targets]
        return (images, targets), len(images)

    def finds_unused_parameters(self) -> bool:
        """No: torchvision's R-CNNs give every trainable parameter a gradient in every training step,
        even from a batch without boxes or positive proposals (the RPN and box losses index empty
        selections, the mask loss adds ``logits.sum() * 0``); checked for Faster and Mask R-CNN with
        ResNet and MobileNetV3 backbones."""
        return False

    def prediction_panel(self) -> None:
        """No segmentation panel for detectors (their scalars still go to TensorBoard)."""
        return None

    def evaluate(self) -> dict:
        """COCO metrics in float32 whatever ``train.amp`` (torchvision decodes boxes in the regression
        output's dtype: bf16 would round coordinates to whole pixels), as ``detect eval`` does."""
        assert self.val_loader is not None
        broadcast_buffers(self.model, self.dist)  # every rank evaluates rank 0's (the saved) weights
        return evaluate_detector(self.model, self.val_loader, self.gt_data, self.category_ids, self.device, self.dist)


def _resolve(root: Path, path: str) -> Path:
    return Path(path) if Path(path).is_absolute() else root / path


def ensure_synthetic_coco(config: DetectionConfig, console: Console) -> None:
    """Generate the embedded dataset if absent and write its COCO annotations if they are missing."""
    root = Path(config.data.root)
    SyntheticDataset.prepare(root, console.print)
    for split, ann in (("train", config.data.train_ann), ("val", config.data.val_ann)):
        path = _resolve(root, ann)
        if not path.is_file():
            console.print(f"writing COCO annotations of the {split} split to {path}")
            write_coco(root, split, path)


def needs_masks(config: DetectionConfig) -> bool:
    """Masks are loaded for Mask R-CNN and for APD pooling under masks."""
    if config.model.arch == "mask_rcnn":
        return True
    if config.distill is None:
        return False
    return (config.distill.options.get("apd") or {}).get("target", "masks") == "masks"


def build_detection_datasets(config: DetectionConfig, console: Console) -> tuple[CocoDetection, CocoDetection]:
    data = config.data
    if data.dataset not in ("synthetic", "coco"):
        raise UserError(f"data.dataset must be 'synthetic' or 'coco' for detection, got {data.dataset!r}")
    if data.dataset == "synthetic":
        ensure_synthetic_coco(config, console)
    root = Path(data.root)
    train = CocoDetection(
        root, _resolve(root, data.train_ann), data.train_images, masks=needs_masks(config), flip_p=data.flip_p
    )
    val = CocoDetection(root, _resolve(root, data.val_ann), data.val_images, masks=False)
    if train.category_ids != val.category_ids:
        raise UserError(f"{train.ann_file} and {val.ann_file} list different categories")
    return train, val


def num_classes_of(config: DetectionConfig, dataset: CocoDetection) -> int:
    """``model.num_classes`` (or the dataset's categories + 1); the teacher's must agree."""
    expected = dataset.num_classes
    for key, section in (("model", config.model), ("teacher", config.teacher)):
        if section is not None and section.num_classes is not None and section.num_classes != expected:
            raise UserError(
                f"{key}.num_classes is {section.num_classes} but {dataset.ann_file} has {expected - 1} categories "
                f"(+ background = {expected}); set {key}.num_classes={expected} or null"
            )
    return expected


def build_detection_loaders(
    config: DetectionConfig, train: CocoDetection, val: CocoDetection, rank: int = 0, world_size: int = 1
) -> tuple:
    """Training batches of ``data.batch_size`` per process (this rank's shard of each epoch) and the
    val split sharded over ranks by whole batches (:func:`val_batches`)."""
    data = config.data
    if len(train) < data.batch_size * world_size:
        per = f" x {world_size} processes" if world_size > 1 else ""
        raise UserError(f"the train split has {len(train)} images, fewer than data.batch_size={data.batch_size}{per}")
    train_loader = DataLoader(
        SeededSamples(train),
        batch_sampler=EpochBatchSampler(len(train), data.batch_size, config.seed, rank, world_size),
        num_workers=data.workers,
        collate_fn=collate_detection,
        worker_init_fn=worker_ignores_stop_signal,  # a SIGTERM lets the step finish and be saved
        # its own generator: without one, starting an iterator draws from the global RNG, so a run
        # resumed mid-epoch would diverge from an uninterrupted one (RPN/RoI sampling uses that RNG)
        generator=torch.Generator().manual_seed(config.seed),
    )
    val_loader = DataLoader(  # its own generator too: an evaluation must not draw from the global RNG
        val,
        batch_sampler=val_batches(len(val), data.batch_size, rank, world_size),
        num_workers=data.workers,
        collate_fn=collate_detection,
        worker_init_fn=worker_ignores_stop_signal,
        generator=evaluation_generator(),
    )
    return train_loader, val_loader


def val_batches(size: int, batch_size: int, rank: int = 0, world_size: int = 1) -> list[list[int]]:
    """The one-process evaluation's batches (images 0..B-1, B..2B-1, ..., the last one partial),
    rank r taking batches r, r + world_size, ...: every image once, and each in the batch it has in
    one process (torchvision pads a batch to its largest image, so its company changes its scores)."""
    batches = [list(range(start, min(start + batch_size, size))) for start in range(0, size, batch_size)]
    return batches[rank::world_size]


def detector_with_weights(cfg, num_classes: int) -> nn.Module:
    """:func:`detector_from_config`, then ``cfg.weights`` loaded when set."""
    model = detector_from_config(cfg, num_classes)
    if cfg.weights:
        load_weights(model, cfg.weights)
    return model


class DetectionJob:
    """The detection family of :func:`~segdistill.engine.job.run_job`: COCO-format datasets, a
    torchvision detector from ``config.model``, the poly schedule with warm-up, COCO evaluation.
    ``num_classes`` (categories + background) is known once :meth:`datasets` has run."""

    def __init__(self, config: DetectionConfig) -> None:
        self.config = config
        self.num_classes: int | None = None

    def start(self) -> tuple[DistInfo, torch.device]:
        return init_distributed(resolve_device(self.config.train.device), self.config.train.dist_timeout)

    def datasets(self, console: Console) -> tuple[CocoDetection, CocoDetection]:
        train, val = build_detection_datasets(self.config, console)
        self.num_classes = num_classes_of(self.config, train)
        return train, val

    def loaders(self, train: CocoDetection, val: CocoDetection, info: DistInfo) -> Loaders:
        return build_detection_loaders(self.config, train, val, info.rank, info.world_size)

    def student(self, process: Process) -> nn.Module:
        assert self.num_classes is not None
        model = detector_with_weights(self.config.model, self.num_classes)
        if process.info.enabled and self.config.train.sync_bn:
            model = sync_batchnorm(model, process.device)  # trainable BatchNorm (model.norm: bn) over all ranks
        return model.to(process.device)

    def trainer(self, task: nn.Module, loaders: Loaders, process: Process) -> DetectionTrainer:
        train, val = self.config.train, loaders[1].dataset
        schedule = with_warmup(
            poly_schedule(train.lr, train.iters, train.poly_power), train.warmup_iters, train.warmup_factor
        )
        gt = {"gt_data": val.data, "category_ids": val.category_ids}
        return DetectionTrainer(
            self.config,
            task,
            *loaders,
            self.num_classes,
            process.device,
            process.console,
            dist=process.info,
            schedule=schedule,
            **gt,
        )

    def summary(self, model: nn.Module, metrics: dict, val: CocoDetection, device: torch.device) -> dict:
        return {
            "name": self.config.name,
            "seed": self.config.seed,
            "val": metrics,
            "parameters": count_parameters(model),
            "train_seconds": metrics.get("train_seconds"),
            "iters": self.config.train.iters,
            "class_names": val.class_names,
        }


def run_detect_train(config: DetectionConfig, resume: bool = False, console: Console | None = None) -> dict:
    """Train ``config.model`` on ``config.data`` with its own losses; COCO-evaluate on the val split."""
    return run_job(DetectionJob(config), lambda model, device: DetectionSupervisedTask(model), resume, console)


def build_detection_distiller(
    config: DetectionConfig, student: nn.Module, teacher: nn.Module, num_classes: int, device: torch.device
) -> DetectionDistiller:
    """:class:`DetectionDistiller` with APD on the FPN levels the two detectors share (probed)."""
    assert config.distill is not None
    unknown = [m for m in config.distill.methods if m != "apd"]
    if unknown or not config.distill.methods:
        raise UserError(f"detection distillation supports methods: [apd], got {config.distill.methods}")
    size = (config.model.min_size, config.model.max_size)

    student_shapes, teacher_shapes = fpn_shapes(student, size, device), fpn_shapes(teacher, size, device)
    levels = pair_levels(student_shapes, teacher_shapes)
    options = dict(config.distill.options.get("apd", {}) or {})  # checked when the config was read
    channels_s = student_shapes[levels[0][0]][0]
    channels_t = teacher_shapes[levels[0][1]][0]
    torch.manual_seed(config.seed)  # adapters initialise the same whatever the teacher's build drew
    apd = DetectionAPDLoss(num_classes, channels_s, channels_t, levels, **options)
    return DetectionDistiller(student, teacher, apd, config.distill.weights).to(device)


def run_detect_distill(config: DetectionConfig, resume: bool = False, console: Console | None = None) -> dict:
    """Train the student detector with APD from ``config.teacher`` (a trained detector)."""
    if config.teacher is None or not config.teacher.weights:
        raise UserError("detect distill needs a 'teacher' section with weights (a trained detector checkpoint)")
    if config.distill is None:
        raise UserError("config has no 'distill' section (distill.methods: [apd])")
    for key in ("min_size", "max_size"):
        if getattr(config.teacher, key) != getattr(config.model, key):
            raise UserError(
                f"teacher.{key} ({getattr(config.teacher, key)}) != model.{key} ({getattr(config.model, key)}): "
                "teacher and student see the same resized batch"
            )
    for key in ("image_mean", "image_std"):
        if config.teacher.options.get(key) != config.model.options.get(key):
            raise UserError(
                f"teacher.options.{key} != model.options.{key}: teacher and student see the same normalised batch"
            )
    check_teacher_file(config, resume)

    job = DetectionJob(config)

    def task(student: nn.Module, device: torch.device) -> nn.Module:
        assert job.num_classes is not None
        teacher = detector_with_weights(config.teacher, job.num_classes).to(device)
        return build_detection_distiller(config, student, teacher, job.num_classes, device)

    return run_job(job, task, resume, console)


def check_teacher_file(config: DetectionConfig, resume: bool) -> None:
    """Record the teacher file's SHA-256 in ``runs/<name>/teacher.sha256``; a resumed run whose
    teacher file has changed since (a teacher run resumed or retrained in place) is refused."""
    assert config.teacher is not None and config.teacher.weights
    path = Path(config.teacher.weights)
    if not path.is_file():
        raise UserError(f"teacher weights not found: {path} (train the teacher first)")
    digest = sha256(path)
    record = config.run_dir / "teacher.sha256"
    if resume and record.is_file() and record.read_text().strip() != digest:
        raise UserError(
            f"the teacher file {path} changed since this run started ({record}); resume with the same teacher, "
            "or start a new run with another name="
        )
    # under torchrun every rank checks; rank 0 writes, and only a new digest (a rank may be reading it)
    if os.environ.get("RANK", "0") == "0" and not (record.is_file() and record.read_text().strip() == digest):
        prepare_run_dir(config.run_dir)
        tmp = record.with_suffix(".tmp")
        tmp.write_text(digest + "\n")
        tmp.replace(record)


def run_detect_eval(config: DetectionConfig, checkpoint: str, console: Console | None = None) -> dict:
    """COCO metrics of ``checkpoint`` on the val split (one process)."""
    if os.environ.get("WORLD_SIZE", "1") not in ("", "1"):
        raise UserError("segdistill detect eval runs in one process: run it without torchrun")
    console = console or Console(stderr=True)
    device = resolve_device(config.train.device)
    if config.data.dataset == "synthetic":
        ensure_synthetic_coco(config, console)
    root = Path(config.data.root)
    val = CocoDetection(root, _resolve(root, config.data.val_ann), config.data.val_images)
    num_classes = num_classes_of(config, val)
    model = detector_from_config(config.model, num_classes)
    load_weights(model, checkpoint)
    model.to(device)
    loader = DataLoader(
        val,
        batch_sampler=val_batches(len(val), config.data.batch_size),
        num_workers=config.data.workers,
        collate_fn=collate_detection,
        generator=evaluation_generator(),
    )
    start = time.perf_counter()
    metrics = evaluate_detector(model, loader, val.data, val.category_ids, device)
    metrics["seconds"] = time.perf_counter() - start
    return metrics
