"""High-level jobs behind the CLI: train a model, evaluate a checkpoint."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from timm.layers import convert_sync_batchnorm
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..base.method_options import method_options
from ..base.weights_io import load_checkpoint
from ..config import Config, ModelConfig, config_to_dict, with_current_defaults
from ..data.datasets import build_dataset, prepare_dataset
from ..data.labels import train_id_to_id_lut
from ..distill import Distiller, MaskedTeacher, TokenTask, probe_channels
from ..distill.methods import MethodContext, build_methods
from ..errors import UserError
from ..models import count_flops, count_parameters
from ..models.sources import default_taps
from ..models.sync_bn import convert_all_reduce_batchnorm
from .builders import (
    build_datasets,
    build_loaders,
    build_model,
    check_class_count,
    check_model_output,
    evaluation_generator,
    keep_workers,
    load_weights,
    write_summary,
)
from .checkpoint import prepare_run_dir
from .distributed import DistInfo, init_distributed
from .evaluator import collate_eval, evaluate, protocol
from .job import Loaders, MakeTask, Process, run_job
from .runtime import autocast_context, resolve_device
from .task import SupervisedTask
from .trainer import Trainer


def run_train(config: Config, resume: bool = False, console: Console | None = None) -> dict:
    """Train ``config.model`` on ``config.data`` (no distillation) and evaluate it on the val split.

    Writes ``runs/<name>/config.yaml``, ``metrics.jsonl``, ``checkpoints/{last,best}.pt`` and
    ``summary.json``; returns the summary (val metrics, parameters, FLOPs, training time).
    Under ``torchrun`` every process trains on its shard of each batch and rank 0 writes."""

    def task(model: nn.Module, device: torch.device) -> nn.Module:
        return SupervisedTask(model, aux_weight=config.train.aux_weight)

    return _run(config, resume, console, task)


class SegmentationJob:
    """The segmentation family of :func:`~segdistill.engine.job.run_job`: ``config.data``'s dataset,
    the seeded epoch sampler, a segmentor from ``config.model``, the poly schedule, mIoU evaluation."""

    def __init__(self, config: Config) -> None:
        self.config = config

    def start(self) -> tuple[DistInfo, torch.device]:
        return init_distributed(resolve_device(self.config.train.device), self.config.train.dist_timeout)

    def datasets(self, console: Console) -> tuple[Dataset, Dataset]:
        return build_datasets(self.config, console)

    def loaders(self, train: Dataset, val: Dataset, info: DistInfo) -> Loaders:
        return build_loaders(self.config, train, val, rank=info.rank, world_size=info.world_size)

    def student(self, process: Process) -> nn.Module:
        model = build_model(self.config.model)
        if process.info.enabled and self.config.train.sync_bn:
            model = sync_batchnorm(model, process.device)
        model = model.to(process.device)
        check_model_output(self.config.model, model, tuple(self.config.data.crop_size))
        return model

    def trainer(self, task: nn.Module, loaders: Loaders, process: Process) -> Trainer:
        num_classes = self.config.model.num_classes
        return Trainer(self.config, task, *loaders, num_classes, process.device, process.console, process.info)

    def summary(self, model: nn.Module, metrics: dict, val: Dataset, device: torch.device) -> dict:
        return finish_summary(self.config, model, metrics, val, device, write=False)


def _run(config: Config, resume: bool, console: Console | None, make_task: MakeTask) -> dict:
    """Plain training and distillation: the segmentation job, single- or multi-process."""
    return run_job(SegmentationJob(config), make_task, resume, console)


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """BatchNorm statistics over all ranks: ``SyncBatchNorm`` on GPUs (timm's converter, which keeps
    the activation of timm's ``BatchNormAct2d``); on CPU, where torch has none,
    :func:`~segdistill.models.sync_bn.convert_all_reduce_batchnorm`."""
    if device.type == "cuda":
        return convert_sync_batchnorm(model)
    return convert_all_reduce_batchnorm(model)


def finish_summary(
    config: Config, model: nn.Module, metrics: dict, val_set, device: torch.device, write: bool = True
) -> dict:
    height, width = val_set[0]["image"].shape[-2:]
    summary = {
        "name": config.name,
        "seed": config.seed,
        "val": metrics,
        "parameters": count_parameters(model),
        "flops": count_flops(model, (height, width), device),
        "flops_input": [height, width],
        "train_seconds": metrics.get("train_seconds"),
        "iters": config.train.iters,
    }
    if write:
        write_summary(config.run_dir / "summary.json", summary)
    return summary


def evaluation_loader(config: Config, split: str | None = None, console: Console | None = None) -> DataLoader:
    """Evaluation batches of ``split`` (default: the val split) of ``config.data``, unaugmented, in
    file order; the dataset is prepared first (the synthetic one generates itself) and the models'
    class counts are checked against it."""
    console = console or Console(stderr=True)
    prepare_dataset(config.data.dataset, config.data.root, console.print)
    dataset = build_dataset(
        config.data.dataset, config.data.root, split or config.data.val_split, cache=config.data.cache
    )
    check_class_count(config)
    return DataLoader(
        dataset,
        batch_size=config.eval.batch_size,
        num_workers=config.data.workers,
        collate_fn=collate_eval,
        generator=evaluation_generator(),
        persistent_workers=keep_workers(config.data),
    )


def evaluate_model(
    config: Config,
    model: nn.Module,
    loader: DataLoader,
    on_prediction: Callable[[list[str], torch.Tensor], None] | None = None,
) -> dict:
    """``model`` (student or teacher, moved to ``train.device``) on ``loader`` under ``config.eval``'s
    protocol, in the precision of evaluation during training (``train.amp``): the metrics of
    :func:`~segdistill.engine.evaluator.evaluate` plus ``seconds`` and ``images``. The one
    evaluation of ``eval``, ``bench`` (the teacher) and ``quickstart`` (the teacher)."""
    device = resolve_device(config.train.device)
    model.to(device)
    start = time.perf_counter()
    with autocast_context(device, config.train.amp):
        metrics = evaluate(
            model, loader, config.model.num_classes, device, on_prediction=on_prediction, **protocol(config)
        )
    metrics["seconds"] = time.perf_counter() - start
    metrics["images"] = len(loader.dataset)
    return metrics


def run_eval(
    config: Config,
    checkpoint: str | None,
    *,
    split: str | None = None,
    console: Console | None = None,
    predictions: str | None = None,
    prediction_format: str = "cityscapes",
) -> dict:
    """Evaluate ``checkpoint`` on ``split`` (default: the val split) with ``config.eval``'s protocol.

    With ``predictions`` (a folder), also write every prediction as a PNG: ``cityscapes`` writes
    labelIds named ``<city>_<seq>_<frame>_pred_labelIds.png``, which the official
    ``cityscapesscripts`` evaluation and the test server read; ``trainid`` writes the train ids as
    ``<name>.png``. The folder appears only when every image is written (it is filled as
    ``<folder>.partial`` first). ``checkpoint`` None: the model as its section builds it, which must
    bring trained weights (``model.weights``, an ``hf`` folder or hub id, torchvision ``kwargs.weights``:
    a model-zoo teacher evaluated as it is)."""
    if checkpoint is None and not has_trained_weights(config.model):
        raise UserError(
            "eval needs --checkpoint, or a model section with trained weights (model.weights, or for source hf "
            "model.pretrained)"
        )
    loader = evaluation_loader(config, split, console)
    model = build_model(config.model)
    if checkpoint is not None:
        load_weights(model, checkpoint)
    check_model_output(config.model, model, tuple(config.data.crop_size))
    writer = PredictionWriter(predictions, prediction_format) if predictions else None
    metrics = evaluate_model(config, model, loader, on_prediction=writer)
    if writer is not None:
        writer.finish()
        metrics["predictions"] = str(writer.folder)
    return metrics


class PredictionWriter:
    """Writes predicted maps as PNGs into ``<folder>.partial``; :meth:`finish` renames it to ``folder``."""

    FORMATS = ("cityscapes", "trainid")

    def __init__(self, folder: str, fmt: str) -> None:
        if fmt not in self.FORMATS:
            raise UserError(f"unknown prediction format {fmt!r}; use one of {', '.join(self.FORMATS)}")
        self.folder = Path(folder)
        if self.folder.exists():
            raise UserError(f"prediction folder {self.folder} already exists; remove it or choose another")
        self.partial = self.folder.with_name(self.folder.name + ".partial")
        shutil.rmtree(self.partial, ignore_errors=True)  # left by an interrupted run
        prepare_run_dir(self.partial)
        self.format = fmt
        self.lut = train_id_to_id_lut() if fmt == "cityscapes" else None

    def __call__(self, names: list[str], predictions: torch.Tensor) -> None:
        for name, prediction in zip(names, predictions.cpu().numpy().astype(np.uint8)):
            if self.lut is not None:
                Image.fromarray(self.lut[prediction]).save(self.partial / f"{name}_pred_labelIds.png")
            else:
                Image.fromarray(prediction).save(self.partial / f"{name}.png")

    def finish(self) -> None:
        self.partial.replace(self.folder)


def _probe(model: nn.Module, taps: dict[str, str], size: tuple[int, int], side: str) -> dict[str, int]:
    """Channels of each tap; an auxiliary head (which runs only in training) runs for the probe."""
    had = getattr(model, "aux_in_eval", None)
    if had is not None:
        model.aux_in_eval = True
    try:
        return probe_channels(model, taps, size, side)
    finally:
        if had is not None:
            model.aux_in_eval = had


def build_distiller(config: Config, student: nn.Module, teacher: nn.Module, device: torch.device) -> nn.Module:
    """The Distiller for ``config.distill``: taps (default:
    :func:`~segdistill.models.sources.default_taps`, e.g. our segmentors' features after the head's
    dropout, as the release taps them, and the classifier), channel counts probed with one forward
    pass, the listed methods with their weights."""
    cfg = config.distill
    assert cfg is not None
    num_classes = config.model.num_classes
    student_taps = cfg.student_taps or default_taps(student, num_classes)
    teacher_taps = cfg.teacher_taps or default_taps(teacher, num_classes)
    size = tuple(config.data.crop_size)
    ctx = MethodContext(
        num_classes=config.model.num_classes,
        student_channels=_probe(student, student_taps, size, "student"),
        teacher_channels=_probe(teacher, teacher_taps, size, "teacher"),
    )
    losses, weights = build_methods(cfg.methods, ctx, cfg.options, cfg.weights)
    if any("aux_logits" in getattr(loss, "taps", ()) for loss in losses.values()) and hasattr(teacher, "aux_in_eval"):
        teacher.aux_in_eval = True  # the frozen teacher runs in eval mode; its aux logits are read
    return Distiller(
        student, teacher, student_taps, teacher_taps, losses, weights, aux_weight=config.train.aux_weight
    ).to(device)


def has_trained_weights(cfg: ModelConfig) -> bool:
    """Whether a model section brings trained weights: ``weights``, a transformers folder or hub id in
    ``pretrained`` (source hf), or a library's own weights named in ``kwargs.weights`` (torchvision)."""
    if cfg.weights:
        return True
    if cfg.source == "hf" and isinstance(cfg.pretrained, str):
        return True
    return cfg.source == "torchvision" and bool(cfg.kwargs.get("weights"))


class MaskTokenJob(SegmentationJob):
    """MasKD's first stage: the "student" is the frozen teacher with receptive tokens on its
    ``distill.options.maskd.tap`` (:class:`~segdistill.distill.maskd_tokens.MaskedTeacher`); the run's
    checkpoints (tokens, optimizer, schedule, RNG) make it resumable; its ``checkpoints/last.pt`` is what
    ``distill.options.maskd.tokens`` names."""

    def student(self, process: Process) -> nn.Module:
        config = self.config
        assert config.teacher is not None and config.distill is not None
        teacher = build_model(config.teacher, key="teacher").to(process.device)
        check_model_output(config.teacher, teacher, tuple(config.data.crop_size), "teacher")
        opts = method_options("maskd", config.distill.options.get("maskd"))
        taps = config.distill.teacher_taps or default_taps(teacher, config.model.num_classes)
        for tap in {opts.tap, "logits"}:
            if tap not in taps:
                raise UserError(
                    f"MasKD's token stage reads the teacher's {tap!r} tap: define it in distill.teacher_taps"
                )
        channels = _probe(teacher, {opts.tap: taps[opts.tap]}, tuple(config.data.crop_size), "teacher")[opts.tap]
        torch.manual_seed(config.seed)
        return MaskedTeacher(teacher, taps, opts.tap, channels, opts.num_tokens).to(process.device)


def run_maskd_tokens(config: Config, resume: bool = False, console: Console | None = None) -> dict:
    """MasKD stage 1: learn the receptive tokens on the frozen ``config.teacher`` with ``config.train``'s
    schedule (the release: SGD lr 0.1, momentum 0.9, weight decay 1e-3, poly 0.9, 10k iterations).

    The stage writes ``<run_dir>/checkpoints/last.pt``; a config whose ``distill.options.maskd.tokens`` names
    another run's file (e.g. the distillation recipe itself, whose run folder the stage would take over) is
    refused. The folder above is not compared (``out_dir`` may be overridden)."""
    if config.teacher is None or not has_trained_weights(config.teacher):
        raise UserError("MasKD's token stage needs a trained teacher: set teacher.weights")
    if config.distill is None:
        raise UserError("config has no 'distill' section (distill.options.maskd holds the token settings)")
    opts = method_options("maskd", config.distill.options.get("maskd"))
    written = config.run_dir / "checkpoints" / "last.pt"
    if opts.tokens and Path(opts.tokens).parts[-3:] != written.parts[-3:]:
        raise UserError(
            f"this token stage would write its tokens to {written}, but distill.options.maskd.tokens is "
            f"{opts.tokens}: run the token recipe (configs/<dataset>/maskd_tokens.yaml), or set "
            f"distill.options.maskd.tokens={written}"
        )
    return run_job(MaskTokenJob(config), lambda student, device: TokenTask(student, opts.dice_weight), resume, console)


def check_maskd_tokens(config: Config) -> None:
    """MasKD's tokens must come from a finished token stage on this very teacher: a stage checkpoint
    (``checkpoints/last.pt``, which carries its step and config) from before the end of its schedule, or
    learned on another teacher section, is refused in one line. A tokens file without that record (e.g.
    exported tokens) is taken as it is."""
    assert config.distill is not None and config.teacher is not None
    tokens = method_options("maskd", config.distill.options.get("maskd")).tokens
    if not tokens or not Path(tokens).is_file() or Path(tokens).suffix == ".safetensors":
        return  # unset / missing: the method's builder says what to run
    state = load_checkpoint(tokens)
    if "step" not in state or not isinstance(state.get("config"), dict):
        return
    saved = with_current_defaults(state["config"])
    iters = saved.get("train", {}).get("iters")
    resume = "finish it with `segdistill maskd-tokens CONFIG --resume`"
    if iters is not None and int(state["step"]) < int(iters):
        raise UserError(
            f"{tokens} holds the tokens of an unfinished token stage (step {state['step']} of {iters}); {resume}"
        )
    ours, theirs = config_to_dict(config)["teacher"], saved.get("teacher") or {}
    for key in sorted(set(ours) | set(theirs)):
        if ours.get(key) != theirs.get(key):
            raise UserError(
                f"{tokens} was learned on another teacher (teacher.{key}: {theirs.get(key)!r} there, "
                f"{ours.get(key)!r} here); learn the tokens on this teacher with `segdistill maskd-tokens CONFIG`"
            )


def run_distill(config: Config, resume: bool = False, console: Console | None = None) -> dict:
    """Train ``config.model`` (the student) with ``config.teacher`` and ``config.distill.methods``.

    Same outputs as :func:`run_train`. With ``methods: []`` it is a plain training run."""
    console = console or Console(stderr=True)
    if config.teacher is None:
        raise UserError("config has no 'teacher' section: a distillation needs a teacher")
    if not has_trained_weights(config.teacher):
        raise UserError(
            "teacher.weights is not set: a distillation needs a trained teacher (a checkpoint or .safetensors "
            "file, shipped:<name>, or for source hf a trained folder / hub id in teacher.pretrained)"
        )
    if config.teacher.num_classes != config.model.num_classes:
        raise UserError(
            f"teacher.num_classes ({config.teacher.num_classes}) != model.num_classes ({config.model.num_classes})"
        )
    if config.distill is None:
        raise UserError("config has no 'distill' section (distill.methods lists the methods)")
    if "maskd" in config.distill.methods:
        check_maskd_tokens(config)

    def task(student: nn.Module, device: torch.device) -> nn.Module:
        teacher = build_model(config.teacher, key="teacher").to(device)
        check_model_output(config.teacher, teacher, tuple(config.data.crop_size), "teacher")
        torch.manual_seed(config.seed)  # loss modules (adapters) initialise the same whatever the teacher built
        return build_distiller(config, student, teacher, device)

    return _run(config, resume, console, task)
