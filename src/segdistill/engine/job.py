"""One job pipeline for every task family: build -> train -> evaluate -> summary.

A :class:`Job` says how its family builds things (datasets, loaders, the student, the trainer, the
summary); :func:`run_job` runs them in the one order that every training command shares, single- or
multi-process. Segmentation (:class:`~segdistill.engine.run.SegmentationJob`) and detection
(:class:`~segdistill.detection.run.DetectionJob`) are the two families.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from rich.console import Console
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..config import save_config
from .builders import write_summary
from .checkpoint import prepare_run_dir
from .distributed import DistInfo, barrier, is_collective_failure, lost_peer_error, shutdown
from .runtime import seed_everything
from .trainer import Trainer

MakeTask = Callable[[nn.Module, torch.device], nn.Module]  # (student on its device, device) -> the task
Loaders = tuple[DataLoader, DataLoader]  # training batches (this rank's shard), the val split


@dataclass(frozen=True)
class Process:
    """Where this process runs: its rank in the job, its device, its console (quiet off rank 0)."""

    info: DistInfo
    device: torch.device
    console: Console


class Job(Protocol):
    """How one task family builds the parts of a training run (``config`` has ``run_dir``, ``seed``,
    ``train.deterministic``)."""

    config: Any

    def start(self) -> tuple[DistInfo, torch.device]:
        """Join the process group (or refuse one) and pick this process's device."""
        ...

    def datasets(self, console: Console) -> tuple[Dataset, Dataset]:
        """The train and val splits (rank 0 builds them first: it may generate the data)."""
        ...

    def loaders(self, train: Dataset, val: Dataset, info: DistInfo) -> Loaders:
        """Seeded training batches (this rank's shard) and the val loader."""
        ...

    def student(self, process: Process) -> nn.Module:
        """The model to train, on ``process.device``."""
        ...

    def trainer(self, task: nn.Module, loaders: Loaders, process: Process) -> Trainer:
        """The trainer for ``task`` with this family's schedule and evaluation."""
        ...

    def summary(self, model: nn.Module, metrics: dict, val: Dataset, device: torch.device) -> dict:
        """``summary.json``'s content from the final evaluation's ``metrics``."""
        ...


def run_job(job: Job, make_task: MakeTask, resume: bool = False, console: Console | None = None) -> dict:
    """Run ``job`` to the end of its schedule and return (and, on rank 0, write) its summary.

    Order: process group, run folder (fails before any work when it cannot be written; a finished
    run's ``summary.json`` is removed), seeds, datasets, loaders, the student, ``config.yaml``, the
    task, per-rank seeds, training (resumed from the newest checkpoint when ``resume``), summary."""
    config = job.config
    info, device = job.start()
    console = console or Console(stderr=True)
    if not info.is_main:
        console = Console(stderr=True, quiet=True)
    process = Process(info, device, console)
    try:
        if info.is_main:
            prepare_run_dir(config.run_dir)
            (config.run_dir / "summary.json").unlink(missing_ok=True)  # written only by a finished run
            (config.run_dir / "diverged.json").unlink(missing_ok=True)  # written by the bench for a stopped run
        seed_everything(config.seed, config.train.deterministic)
        if info.is_main:  # rank 0 prepares the data (generation), then the others read it
            train_set, val_set = job.datasets(console)
        barrier(info)
        if not info.is_main:
            train_set, val_set = job.datasets(console)
        loaders = job.loaders(train_set, val_set, info)
        model = job.student(process)  # built first: the same init as the baseline's in a distillation
        if info.is_main:
            save_config(config, config.run_dir / "config.yaml")
        task = make_task(model, device)
        if info.enabled:
            torch.manual_seed(config.seed + info.rank)  # distinct dropout masks per rank
        trainer = job.trainer(task, loaders, process)
        metrics = trainer.fit(resume=resume)
        summary = job.summary(model, metrics, val_set, device)
        if info.is_main:
            write_summary(config.run_dir / "summary.json", summary)
        barrier(info)
        return summary
    except Exception as exc:
        if info.enabled and is_collective_failure(exc):
            raise lost_peer_error(info, exc) from exc
        raise
    finally:
        shutdown()
