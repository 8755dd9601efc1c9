"""The training loop: SGD + poly schedule, progress bar, metrics.jsonl, last/best checkpoints."""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn
from torch.utils.data import DataLoader

from ..config import Config, config_to_dict
from ..errors import UserError
from .checkpoint import atomic_save, load_checkpoint
from .evaluator import evaluate
from .task import StepOutput


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch; on request make torch choose deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"train.device is {name!r} but no CUDA device is available; use device=cpu or auto")
    return device


AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_context(device: torch.device, amp: str):
    """``torch.autocast`` for ``amp`` in {"none", "bf16", "fp16"} (fp16 only on CUDA)."""
    if amp not in AMP_DTYPES:
        raise UserError(f"train.amp must be one of {', '.join(AMP_DTYPES)}, got {amp!r}")
    if amp == "fp16" and device.type != "cuda":
        raise UserError("train.amp=fp16 needs a CUDA device (use bf16 on CPU)")
    dtype = AMP_DTYPES[amp]
    return torch.autocast(device_type=device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def poly_lr(base_lr: float, step: int, total: int, power: float) -> float:
    """The poly schedule: ``base_lr * (1 - step / total) ** power``."""
    return base_lr * (1.0 - step / total) ** power


class Trainer:
    """Runs ``config.train.iters`` SGD steps of ``task`` over ``train_loader``, evaluating ``task.student``
    on ``val_loader`` every ``eval_interval`` steps (and at the end).

    Writes to ``run_dir``: ``metrics.jsonl`` (one JSON object per log line and per evaluation),
    ``checkpoints/last.pt`` and ``checkpoints/best.pt`` (highest val mIoU).
    """

    def __init__(
        self,
        config: Config,
        task: nn.Module,
        train_loader: DataLoader,
        val_loader: DataLoader | None,
        num_classes: int,
        device: torch.device,
        console: Console | None = None,
    ) -> None:
        self.config = config
        self.task = task.to(device)
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.num_classes = num_classes
        self.device = device
        self.console = console or Console(stderr=True)
        self.run_dir = config.run_dir
        self.ckpt_dir = self.run_dir / "checkpoints"
        cfg = config.train
        self.optimizer = torch.optim.SGD(
            task.param_groups(cfg.lr, cfg.head_lr_mult),
            lr=cfg.lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
        )
        self.step = 0
        self.best_miou = -1.0
        self.epoch = 0
        self.autocast = lambda: autocast_context(device, cfg.amp)
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
        if cfg.channels_last:
            self.task.to(memory_format=torch.channels_last)

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict:
        extra = {name: opt.state_dict() for name, (module, opt) in self._extra_steps().items()}
        return {
            "model": self.task.student.state_dict(),
            "task": self.task.trainable_state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "extra_optimizers": extra,
            "step": self.step,
            "epoch": self.epoch,
            "best_miou": self.best_miou,
            "torch_rng": torch.get_rng_state(),
            "scaler": self.scaler.state_dict(),
            "config": config_to_dict(self.config),
        }

    def load_state_dict(self, state: dict) -> None:
        self.task.student.load_state_dict(state["model"])
        self.task.load_trainable_state_dict(state["task"])
        self.optimizer.load_state_dict(state["optimizer"])
        for name, (_, opt) in self._extra_steps().items():
            if name in state.get("extra_optimizers", {}):
                opt.load_state_dict(state["extra_optimizers"][name])
        self.step = int(state["step"])
        self.epoch = int(state.get("epoch", 0))
        self.best_miou = float(state.get("best_miou", -1.0))
        torch.set_rng_state(state["torch_rng"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])

    def resume(self) -> bool:
        """Load ``checkpoints/last.pt`` if present; returns whether it did."""
        path = self.ckpt_dir / "last.pt"
        if not path.is_file():
            return False
        self.load_state_dict(load_checkpoint(path))
        self.console.print(f"resumed from {path} at step {self.step}")
        return True

    @staticmethod
    def _own_steps(out, steps: list) -> None:
        """Back-propagate each own-optimizer term into its module alone and step its optimizer."""
        for name, _module, opt in steps:
            term = out.extra_losses[name]
            opt.zero_grad(set_to_none=True)
            # As the APD release: no step on a batch where the term is 0 (no valid pixel), so that
            # Adam's momentum does not move the module on an empty batch.
            if term.requires_grad and float(term.detach()) > 0.0:
                term.backward()
                opt.step()

    def _extra_steps(self) -> dict:
        return {name: (module, opt) for name, module, opt in self.task.extra_steps}

    # ---------------------------------------------------------------- loop
    def _batches(self) -> Iterator[dict]:
        while True:
            sampler = getattr(self.train_loader, "sampler", None)
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(self.epoch)
            generator = getattr(self.train_loader, "generator", None)
            if generator is not None:
                generator.manual_seed(self.config.seed * 100003 + self.epoch)
            yield from self.train_loader
            self.epoch += 1

    def _log(self, record: dict) -> None:
        with open(self.run_dir / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def _set_lr(self) -> float:
        cfg = self.config.train
        lr = poly_lr(cfg.lr, self.step, cfg.iters, cfg.poly_power)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)
        return lr

    def _check_finite(self, out: StepOutput) -> None:
        if torch.isfinite(out.total):
            return
        bad = [name for name, value in out.losses.items() if not torch.isfinite(value)]
        raise UserError(
            f"loss is not finite at step {self.step} (term {', '.join(bad) or 'total'}); "
            f"the last good checkpoint is {self.ckpt_dir / 'last.pt'}; try a lower train.lr"
        )

    def evaluate(self) -> dict:
        assert self.val_loader is not None
        cfg = self.config.eval
        window = cfg.crop_size or self.config.data.crop_size
        stride = cfg.stride or [max(1, (2 * w) // 3) for w in window]
        with self.autocast():
            return evaluate(
                self.task.student,
                self.val_loader,
                self.num_classes,
                self.device,
                mode=cfg.mode,
                window=window,
                stride=stride,
                scales=cfg.scales,
                flip=cfg.flip,
            )

    def fit(self, resume: bool = False) -> dict:
        cfg = self.config.train
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            self.resume()
        elif (self.run_dir / "metrics.jsonl").exists():
            (self.run_dir / "metrics.jsonl").unlink()
        self.task.train()
        batches = self._batches()
        batch_size = self.config.data.batch_size
        last_metrics: dict = {}
        start_time = time.perf_counter()
        window_start, window_images = time.perf_counter(), 0
        totals: dict[str, torch.Tensor] = {}  # summed on the device, read once per log interval
        progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
            refresh_per_second=2,
            disable=not self.console.is_terminal,  # logs and CI get plain lines (below), never a bar's last frame
        )
        with progress:
            bar = progress.add_task(self.config.name, total=cfg.iters, completed=self.step, info="")
            while self.step < cfg.iters:
                batch = next(batches)
                images = batch["image"].to(self.device, non_blocking=True)
                labels = batch["label"].to(self.device, non_blocking=True)
                if self.config.train.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                lr = self._set_lr()
                with self.autocast():
                    out = self.task(images, labels)
                self._check_finite(out)
                late = getattr(self.task, "steps_after_student", frozenset())
                self._own_steps(out, [s for s in self.task.extra_steps if s[0] not in late])  # APD's teacher adapter
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(out.total).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self._own_steps(out, [s for s in self.task.extra_steps if s[0] in late])  # a GAN discriminator
                self.step += 1
                window_images += images.shape[0]
                for name, value in out.losses.items():
                    totals[name] = totals.get(name, 0.0) + value.detach()
                totals["loss"] = totals.get("loss", 0.0) + out.total.detach()
                if self.step % cfg.log_interval == 0 or self.step == cfg.iters:
                    n = cfg.log_interval if self.step % cfg.log_interval == 0 else self.step % cfg.log_interval
                    elapsed = time.perf_counter() - window_start
                    record = {"step": self.step, "lr": lr, "images_per_s": window_images / max(elapsed, 1e-9)}
                    record.update({k: float(v) / n for k, v in totals.items()})
                    self._log(record)
                    info = f"loss {record['loss']:.3f}  lr {lr:.2e}  {record['images_per_s']:.1f} img/s"
                    progress.update(bar, info=info)
                    if not self.console.is_terminal:  # logs and CI: a plain line instead of a live bar
                        self.console.print(f"{self.config.name} step {self.step}/{cfg.iters}  {info}")
                    totals, window_start, window_images = {}, time.perf_counter(), 0
                progress.update(bar, completed=self.step)
                evaluate_now = self.step == cfg.iters or (cfg.eval_interval and self.step % cfg.eval_interval == 0)
                if evaluate_now:
                    last_metrics = self._evaluate_and_save()
                    window_start = time.perf_counter()
        last_metrics["train_seconds"] = time.perf_counter() - start_time
        last_metrics["batch_size"] = batch_size
        return last_metrics

    def _evaluate_and_save(self) -> dict:
        metrics: dict = {}
        if self.val_loader is not None:
            metrics = self.evaluate()
            self._log({"step": self.step, "eval": metrics})
            self.console.print(
                f"step {self.step}: val mIoU {100 * metrics['mIoU']:.2f}  pixel acc {100 * metrics['pixel_acc']:.2f}"
            )
        miou = metrics.get("mIoU", -1.0)
        is_best = not math.isnan(miou) and miou > self.best_miou
        if is_best:
            self.best_miou = miou
        state = self.state_dict()
        atomic_save(state, self.ckpt_dir / "last.pt")
        if is_best:
            atomic_save(state, self.ckpt_dir / "best.pt")
        return metrics


def write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    tmp.replace(path)
