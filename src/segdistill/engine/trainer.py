"""The training loop: SGD or AdamW + poly schedule, progress bar, metrics.jsonl, last/best checkpoints, resume."""

from __future__ import annotations

import itertools
import json
import math
import shutil
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from ..config import Config, TrainConfig, config_to_dict, with_current_defaults
from ..errors import LossNotFinite, TrainingStopped, UserError
from ..models import Segmentor
from .checkpoint import load_latest_checkpoint, prepare_run_dir, save_training_checkpoint
from .distributed import (
    DistInfo,
    all_reduce_mean_,
    any_rank,
    average_gradients,
    broadcast_buffers,
    gather_objects,
)
from .evaluator import evaluate, protocol
from .runtime import autocast_context, rng_state, set_rng_state
from .stopping import StopSignal
from .task import OwnStep, StepOutput, Task, optimizer_steps, own_step_is_active
from .tensorboard import TensorBoardLog, prediction_panel, tensorboard_installed


def poly_lr(base_lr: float, step: int, total: int, power: float) -> float:
    """The poly schedule: ``base_lr * (1 - step / total) ** power``."""
    return base_lr * (1.0 - step / total) ** power


Schedule = Callable[[int], float]  # step -> learning rate of the backbone group


def poly_schedule(base_lr: float, total: int, power: float) -> Schedule:
    """:func:`poly_lr` as a function of the step (the segmentation recipe)."""
    return lambda step: poly_lr(base_lr, step, total, power)


def with_warmup(schedule: Schedule, warmup_iters: int, factor: float) -> Schedule:
    """``schedule`` scaled by a linear warm-up from ``factor`` to 1 over ``warmup_iters`` steps
    (torchvision's detection recipe)."""

    def lr(step: int) -> float:
        value = schedule(step)
        if step < warmup_iters:
            alpha = step / warmup_iters
            value *= factor * (1.0 - alpha) + alpha
        return value

    return lr


# Config keys that may change between a run and its resume (they do not change what is trained).
RESUMABLE_CHANGES = {
    "train.log_interval",
    "train.eval_interval",
    "train.checkpoint_interval",
    "train.device",
    "data.workers",
    "data.cache",
    "data.root",
    "out_dir",
    "eval.batch_size",
    "train.tensorboard",
}


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value and key not in ("options", "weights", "backbone_kwargs"):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def config_changes(saved: dict, current: dict, allowed: frozenset[str] | set[str] = RESUMABLE_CHANGES) -> list[str]:
    """``key: saved -> current`` for every config key that differs and would change the training (keys in
    ``allowed`` aside)."""
    a, b = _flatten(saved), _flatten(current)
    keys = sorted(set(a) | set(b))
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys if a.get(k) != b.get(k) and k not in allowed]


def build_optimizer(groups: list[dict], cfg: TrainConfig) -> torch.optim.Optimizer:
    """The student's optimizer over its parameter groups: ``train.optimizer`` sgd (momentum,
    ``train.weight_decay``) or adamw (betas 0.9 / 0.999, decoupled ``train.weight_decay``); the
    schedule sets each group's rate every step."""
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


class Trainer:
    """Runs ``config.train.iters`` SGD steps of ``task`` over ``train_loader``, evaluating ``task.student``
    on ``val_loader`` every ``eval_interval`` steps (and at the end).

    Writes to ``run_dir``: ``metrics.jsonl`` (one JSON object per log line and per evaluation),
    ``checkpoints/last.pt`` (every ``checkpoint_interval`` steps and at every evaluation; the one
    before is kept as ``last.previous.pt``) and ``checkpoints/best.pt`` (highest val ``score_key``:
    mIoU here, box AP for detectors).

    ``fit(resume=True)`` continues from the newest intact checkpoint exactly where it was written:
    weights, every optimizer, the schedule step, every RNG, the position in the epoch and the
    partly summed log window are restored, so a killed and resumed run ends with the same weights and
    metrics as an uninterrupted one (bitwise on CPU in deterministic mode).
    """

    def __init__(
        self,
        config: Config,
        task: Task,
        train_loader: DataLoader,
        val_loader: DataLoader | None,
        num_classes: int,
        device: torch.device,
        console: Console | None = None,
        dist: DistInfo | None = None,
        schedule: Schedule | None = None,
    ) -> None:
        self.config = config
        self.dist = dist or DistInfo()
        self.task = task.to(device)
        self.model = task.student  # the student itself (under DDP, task.student becomes its DDP wrapper)
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.num_classes = num_classes
        self.device = device
        self.console = console or Console(stderr=True)
        self.run_dir = config.run_dir
        self.ckpt_dir = self.run_dir / "checkpoints"
        cfg = config.train
        self.schedule = schedule or poly_schedule(cfg.lr, cfg.iters, cfg.poly_power)
        self.optimizer = build_optimizer(task.param_groups(cfg.lr, cfg.head_lr_mult), cfg)
        if cfg.nonfinite not in ("stop", "skip"):
            raise UserError(f"train.nonfinite must be 'stop' or 'skip', got {cfg.nonfinite!r}")
        self.step = 0
        self.best_score = -1.0  # the best value of score_key so far (mIoU, or box AP for detectors)
        self.epoch = 0
        self.batch_in_epoch = 0  # batches of the current epoch already trained on
        self.skipped = 0  # batches skipped for a non-finite loss (train.nonfinite=skip)
        self.trained_seconds = 0.0  # before this process (resumed runs)
        self._start: float | None = None  # perf_counter() when this process started training
        self.window: dict = {"totals": {}, "steps": 0, "images": 0}  # the log window being summed
        self.tensorboard: TensorBoardLog | None = None  # open while fit() runs
        self._stop_signal: StopSignal | None = None  # installed while fit() runs
        self.autocast = lambda: autocast_context(device, cfg.amp)
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
        if cfg.channels_last:
            self.task.to(memory_format=torch.channels_last)
        student_ids = {id(p) for p in self.model.parameters()}
        # Trained by the student's optimizer but outside the student (adapters, projectors): their
        # gradients are averaged over ranks by hand; the student's by DDP.
        self._loss_params = [p for g in self.optimizer.param_groups for p in g["params"] if id(p) not in student_ids]
        # a loss that clips its own modules' gradient norm (Af-DCD: 15), after averaging, before the step
        self._clips = bool(getattr(self.task, "clips_gradients", False))
        if self.dist.enabled:
            ids = [device.index] if device.type == "cuda" else None
            unused = self.finds_unused_parameters()
            self.task.student = DistributedDataParallel(self.model, device_ids=ids, find_unused_parameters=unused)

    def finds_unused_parameters(self) -> bool:
        """Whether DDP must look for student parameters without a gradient in a step (one graph
        traversal per step). A model from another library may compute outputs its loss does not read
        (transformers' UperNet auxiliary head, smp's classification head); ours use every parameter."""
        return not isinstance(self.model, Segmentor)

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict:
        own = {step.term: step.optimizer.state_dict() for step in self.task.own_steps()}
        return {
            "model": self.model.state_dict(),
            "task": self.task.trainable_state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "extra_optimizers": own,  # the own optimizers' states (key kept: older checkpoints resume)
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "best_score": self.best_score,
            "skipped": self.skipped,
            "train_seconds": self.trained_seconds + (time.perf_counter() - self._start if self._start else 0.0),
            # per rank: [rank 0's, rank 1's, ...] (one entry without DDP)
            "window": gather_objects(
                {
                    "totals": {k: v.detach().cpu().clone() for k, v in self.window["totals"].items()},
                    "steps": self.window["steps"],
                },
                self.dist,
            ),
            "rng": gather_objects(rng_state(), self.dist),
            "scaler": self.scaler.state_dict(),
            "config": config_to_dict(self.config),
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.task.load_trainable_state_dict(state["task"])
        self.optimizer.load_state_dict(state["optimizer"])
        for step in self.task.own_steps():
            if step.term in state.get("extra_optimizers", {}):
                step.optimizer.load_state_dict(state["extra_optimizers"][step.term])
        self.step = int(state["step"])
        self.epoch = int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])
        self.best_score = float(state["best_score"] if "best_score" in state else state["best_miou"])  # older name
        self.skipped = int(state["skipped"])
        self.trained_seconds = float(state["train_seconds"])
        if len(state["rng"]) != self.dist.world_size:
            raise UserError(
                f"the checkpoint was written by {len(state['rng'])} processes, this run has {self.dist.world_size}"
            )
        window = state["window"][self.dist.rank]
        self.window = {
            "totals": {k: v.to(self.device) for k, v in window["totals"].items()},
            "steps": int(window["steps"]),
            "images": 0,  # images/s is measured over this process's part of the window
        }
        set_rng_state(state["rng"][self.dist.rank])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])

    def resume(self) -> bool:
        """Load the newest intact checkpoint (``last.pt``, else ``last.previous.pt``, with a warning);
        returns whether there was one. Log lines written after it are dropped from ``metrics.jsonl``."""
        if self.dist.is_main:
            for stray in self.ckpt_dir.glob(".*.tmp"):  # a write cut by a kill; never a complete checkpoint
                stray.unlink(missing_ok=True)
        found = load_latest_checkpoint(self.ckpt_dir, warn=self._warn)
        if found is None:
            self._truncate_log(0)
            return False
        state, path = found
        saved = with_current_defaults(state.get("config", {}), type(self.config))
        changes = config_changes(saved, config_to_dict(self.config))
        if changes:
            raise UserError(
                f"{path} was written by a run with another config ({'; '.join(changes[:3])}); "
                "resume with the same config, or start a new run with another name="
            )
        try:
            self.load_state_dict(state)
        except (KeyError, RuntimeError, ValueError) as exc:
            raise UserError(f"{path} does not fit this run ({str(exc).splitlines()[0]})") from exc
        self._truncate_log(self.step)
        if self.dist.is_main:
            self.console.print(f"resumed from {path} at step {self.step}")
        return True

    def _warn(self, message: str) -> None:
        if self.dist.is_main:
            self.console.print(f"warning: {message}")

    def _truncate_log(self, step: int) -> None:
        """Drop the ``metrics.jsonl`` records after ``step`` (written after the checkpoint resumed from)."""
        path = self.run_dir / "metrics.jsonl"
        if not self.dist.is_main or not path.exists():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut by the kill
                continue
            if record.get("step", 0) <= step:
                kept.append(line)
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        tmp.replace(path)

    def _own_step(self, step: OwnStep, term: torch.Tensor) -> None:
        """Back-propagate an own-optimizer term into its module alone and step its optimizer; a batch
        where the term is 0 is skipped (:func:`~segdistill.engine.task.own_step_is_active`). Under DDP
        the ranks decide together (a rank with an empty batch contributes zero gradients), and every rank
        back-propagates its term, 0 or not: a term whose backward holds a collective (APD's scope global
        all-reduces the prototype gradients) must run it on every rank, or the ranks' collectives differ."""
        step.optimizer.zero_grad(set_to_none=True)
        active = own_step_is_active(term)
        if not any_rank(active, self.dist, self.device):
            return
        if active or (self.dist.enabled and term.requires_grad):
            term.backward()
        average_gradients(step.module.parameters(), self.dist)
        step.optimizer.step()

    # ---------------------------------------------------------------- loop
    def _batches(self) -> Iterator[dict]:
        """Batches from epoch ``self.epoch`` on, starting after the ``self.batch_in_epoch`` already used.

        A batch sampler with ``set_start`` (ours: :class:`~segdistill.data.sampling.EpochBatchSampler`)
        skips without loading; any other loader is replayed up to that point, which is exact when its
        order and augmentation depend only on the epoch."""
        while True:
            batch_sampler = getattr(self.train_loader, "batch_sampler", None)
            sampler = getattr(self.train_loader, "sampler", None)
            for s in (batch_sampler, sampler):
                if hasattr(s, "set_epoch"):
                    s.set_epoch(self.epoch)
            generator = getattr(self.train_loader, "generator", None)
            if generator is not None:
                generator.manual_seed(self.config.seed * 100003 + self.epoch)
            skips = hasattr(batch_sampler, "set_start")
            if skips:
                batch_sampler.set_start(self.batch_in_epoch)
            batches = iter(self.train_loader)
            if not skips and self.batch_in_epoch:
                batches = itertools.islice(batches, self.batch_in_epoch, None)
            for batch in batches:
                self.batch_in_epoch += 1
                yield batch
            self.epoch += 1
            self.batch_in_epoch = 0

    def _log(self, record: dict) -> None:
        if not self.dist.is_main:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.tensorboard is not None:
            self.tensorboard.record(record)

    def _open_tensorboard(self, purge_step: int | None) -> TensorBoardLog | None:
        """Rank 0's TensorBoard log of this run (``train.tensorboard`` and the package installed), else None;
        a resumed run drops the events a stopped process wrote after its checkpoint (``purge_step``)."""
        if not (self.config.train.tensorboard and self.dist.is_main and tensorboard_installed()):
            return None
        names = getattr(self.val_loader.dataset, "class_names", None) if self.val_loader is not None else None
        return TensorBoardLog(self.run_dir / "tensorboard", list(names) if names else None, purge_step)

    def prediction_panel(self) -> np.ndarray | None:
        """``image | labels | prediction`` of the first val images for TensorBoard (None: no val split)."""
        if self.val_loader is None:
            return None
        return prediction_panel(self.model, self.val_loader.dataset, self.device)

    def _inputs(self, batch: dict) -> tuple[tuple, int]:
        """The task's arguments for one loader batch, on the device, and the number of images in it."""
        images = batch["image"].to(self.device, non_blocking=True)
        labels = batch["label"].to(self.device, non_blocking=True)
        if self.config.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return (images, labels), images.shape[0]

    def _set_lr(self) -> float:
        lr = self.schedule(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)
        return lr

    def _stop_requested(self) -> bool:
        """Whether a SIGTERM reached any rank (checked at the end of every step, after its evaluation
        and save; under torchrun one all-reduce of one value, so that every rank stops at the same step)."""
        requested = self._stop_signal is not None and self._stop_signal.requested
        return any_rank(requested, self.dist, self.device) if self.dist.enabled else requested

    def _nonfinite_terms(self, out: StepOutput) -> list[str]:
        """Names of the non-finite loss terms (``[]`` when all are finite): one device sync per step."""
        terms = {**out.losses, **out.own_losses}
        values = [out.total, *terms.values()]
        flags = torch.stack([torch.isfinite(v.detach().float()) for v in values])
        if not any_rank(not bool(flags.all()), self.dist, self.device):
            return []
        if bool(flags.all()):
            return [f"on another rank than {self.dist.rank}"]
        bad = [name for name, ok in zip(terms, flags[1:].tolist()) if not ok]
        return bad or ["total"]

    def _on_nonfinite(self, bad: list[str]) -> None:
        """Stop naming the step and the terms (keeping the last checkpoint), or count a skipped batch."""
        cfg = self.config.train
        where = f"at step {self.step + 1} (term {', '.join(bad)})"
        if cfg.nonfinite == "skip" and self.skipped < cfg.max_skips:
            self.skipped += 1
            self._warn(f"loss is not finite {where}; batch skipped ({self.skipped} of at most {cfg.max_skips})")
            self._log({"step": self.step + 1, "skipped_nonfinite": bad, "skipped": self.skipped})
            return
        last = self.ckpt_dir / "last.pt"
        kept = f"the last good checkpoint is {last}" if last.is_file() else "no checkpoint was written yet"
        reason = f" after {self.skipped} skipped batches (train.max_skips)" if cfg.nonfinite == "skip" else ""
        raise LossNotFinite(f"loss is not finite {where}{reason}; {kept}; try a lower train.lr", self.step + 1, bad)

    score_key = "mIoU"  # the val metric that picks checkpoints/best.pt

    @staticmethod
    def describe(metrics: dict) -> str:
        """The one-line summary of an evaluation printed during training."""
        return f"mIoU {100 * metrics['mIoU']:.2f}  pixel acc {100 * metrics['pixel_acc']:.2f}"

    def evaluate(self) -> dict:
        """The student on the val split (each rank its shard; the confusion matrix is summed)."""
        assert self.val_loader is not None
        broadcast_buffers(self.model, self.dist)  # every rank evaluates rank 0's (the saved) weights
        with self.autocast():
            return evaluate(self.model, self.val_loader, self.num_classes, self.device, **protocol(self.config))

    def fit(self, resume: bool = False) -> dict:
        """Train to ``config.train.iters`` (continuing from the newest checkpoint when ``resume``);
        returns the final evaluation's metrics with ``train_seconds`` and ``batch_size``."""
        main = self.dist.is_main
        if main:
            prepare_run_dir(self.run_dir)
            (self.run_dir / "summary.json").unlink(missing_ok=True)  # a run in progress has no final summary
        resumed = resume and self.resume()
        if not resumed and main:
            (self.run_dir / "metrics.jsonl").unlink(missing_ok=True)
            shutil.rmtree(self.run_dir / "tensorboard", ignore_errors=True)  # a fresh run's curves start afresh
        self.tensorboard = self._open_tensorboard(purge_step=self.step + 1 if resumed else None)
        try:
            with StopSignal() as self._stop_signal:
                return self._fit()
        finally:
            self._stop_signal = None
            if self.tensorboard is not None:
                self.tensorboard.close()
                self.tensorboard = None

    def _fit(self) -> dict:
        cfg = self.config.train
        self.task.train()
        batches = self._batches()
        last_metrics: dict = {}
        self._start = time.perf_counter()
        window_start = time.perf_counter()
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
                inputs, count = self._inputs(next(batches))
                lr = self._set_lr()
                with self.autocast():
                    out = self.task(*inputs)
                bad = self._nonfinite_terms(out)
                if bad:
                    self._on_nonfinite(bad)  # raises unless the batch is skipped
                else:
                    self._train_step(out)
                    window = self.window
                    for name, value in {**out.losses, **out.own_losses}.items():  # own: e.g. apd_teacher_ce
                        window["totals"][name] = window["totals"].get(name, 0.0) + value.detach()
                    window["totals"]["loss"] = window["totals"].get("loss", 0.0) + out.total.detach()
                    window["steps"] += 1
                self.step += 1
                self.window["images"] += count
                if self.step % cfg.log_interval == 0 or self.step == cfg.iters:
                    self._log_window(lr, time.perf_counter() - window_start, progress, bar)
                    window_start = time.perf_counter()
                progress.update(bar, completed=self.step)
                evaluate_now = self.step == cfg.iters or (cfg.eval_interval and self.step % cfg.eval_interval == 0)
                saved = True
                if evaluate_now:
                    last_metrics = self._evaluate_and_save()
                    window_start = time.perf_counter()
                elif cfg.checkpoint_interval and self.step % cfg.checkpoint_interval == 0:
                    self._save()
                else:
                    saved = False
                if self.step < cfg.iters and self._stop_requested():
                    if not saved:
                        self._save()
                    raise TrainingStopped(
                        f"SIGTERM at step {self.step} of {cfg.iters}; checkpoint saved in {self.ckpt_dir / 'last.pt'}"
                    )
        if not last_metrics and self.val_loader is not None:  # resumed a finished run: evaluate again
            last_metrics = self.evaluate()
        last_metrics["train_seconds"] = self.trained_seconds + time.perf_counter() - self._start
        last_metrics["batch_size"] = self.config.data.batch_size
        last_metrics["skipped_batches"] = self.skipped
        return last_metrics

    def _train_step(self, out: StepOutput) -> None:
        optimizer_steps(self.task, out, lambda: self._student_step(out), self._own_step)

    def _student_step(self, out: StepOutput) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(out.total).backward()  # DDP averages the student's gradients over ranks
        average_gradients(self._loss_params, self.dist)
        if self._clips:
            self.scaler.unscale_(self.optimizer)
            self.task.clip_gradients()
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def _log_window(self, lr: float, elapsed: float, progress: Progress, bar) -> None:
        """Write the log window's mean terms to metrics.jsonl and the console, then start a new window."""
        window = self.window
        names = sorted(window["totals"])
        means = [torch.as_tensor(window["totals"][k] / max(window["steps"], 1), device=self.device) for k in names]
        all_reduce_mean_(means, self.dist)  # the mean over ranks of each rank's window mean
        images = window["images"] * self.dist.world_size
        record = {"step": self.step, "lr": lr, "images_per_s": images / max(elapsed, 1e-9)}
        record.update({k: float(v) for k, v in zip(names, means)})
        if self.skipped:
            record["skipped"] = self.skipped
        self._log(record)
        info = f"loss {record.get('loss', float('nan')):.3f}  lr {lr:.2e}  {record['images_per_s']:.1f} img/s"
        progress.update(bar, info=info)
        if self.dist.is_main and not self.console.is_terminal:  # logs and CI: a plain line, not a live bar
            self.console.print(f"{self.config.name} step {self.step}/{self.config.train.iters}  {info}")
        self.window = {"totals": {}, "steps": 0, "images": 0}

    def _evaluate_and_save(self) -> dict:
        metrics: dict = {}
        if self.val_loader is not None:
            metrics = self.evaluate()
            self._log({"step": self.step, "eval": metrics})
            if self.tensorboard is not None:
                panel = self.prediction_panel()
                if panel is not None:
                    self.tensorboard.panel(self.step, panel)
            if self.dist.is_main:
                self.console.print(f"step {self.step}: val {self.describe(metrics)}")
        score = metrics.get(self.score_key, -1.0)
        is_best = not math.isnan(score) and score > self.best_score
        if is_best:
            self.best_score = score
        self._save(best=is_best)
        return metrics

    def _save(self, best: bool = False) -> None:
        state = self.state_dict()  # every rank: it gathers their RNG states
        if not self.dist.is_main:
            return
        save_training_checkpoint(state, self.ckpt_dir / "last.pt")
        if best:
            save_training_checkpoint(state, self.ckpt_dir / "best.pt", keep_previous=False)
