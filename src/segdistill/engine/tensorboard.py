"""TensorBoard logging of a training run (``train.tensorboard``, on when the ``tensorboard`` package is
installed: ``pip install 'segdistill[tensorboard]'``), so a long run or a bench grid can be watched while it
runs: ``tensorboard --logdir runs``.

Written by rank 0 into ``<run_dir>/tensorboard``: every record of ``metrics.jsonl`` as scalars (``train/<term>``
for each loss term, ``train/loss``, ``train/lr``, ``train/images_per_s``; ``val/<metric>`` for each scalar
metric of an evaluation, ``val_iou/<class>`` per class) at its step, and at each evaluation a prediction
panel (``val/predictions``: image | labels | prediction, one row per val image).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from ..data.labels import colorize
from ..data.transforms import denormalize
from .inference import forward_logits

PANEL_IMAGES = 3  # val images in the prediction panel


def tensorboard_installed() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


class TensorBoardLog:
    """Scalars and prediction panels of one run in ``log_dir`` (one event file per process that opens it)."""

    def __init__(self, log_dir: Path, class_names: list[str] | None = None, purge_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step)
        self.class_names = class_names or []

    def record(self, record: dict) -> None:
        """One ``metrics.jsonl`` record: a training window (terms, lr, images/s) or ``{"step", "eval": {...}}``."""
        step = int(record["step"])
        if "eval" in record:
            for key, value in record["eval"].items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(f"val/{key}", value, step)
            for c, value in enumerate(record["eval"].get("iou") or []):
                if value is not None:
                    name = self.class_names[c] if c < len(self.class_names) else str(c)
                    self.writer.add_scalar(f"val_iou/{name}", value, step)
            return
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"train/{key}", value, step)

    def panel(self, step: int, panel: np.ndarray) -> None:
        """An ``H x W x 3`` uint8 image as ``val/predictions`` at ``step``."""
        self.writer.add_image("val/predictions", panel, step, dataformats="HWC")

    def close(self) -> None:
        self.writer.close()


@torch.no_grad()
def prediction_panel(model: nn.Module, dataset: Dataset, device: torch.device, count: int = PANEL_IMAGES) -> np.ndarray:
    """``image | labels | prediction`` for the first ``count`` images of ``dataset`` (items with ``image``
    ``3 x H x W`` and ``label`` ``H x W``), one row each, rows padded to the widest: ``H' x W' x 3`` uint8.
    The model runs in eval mode on each whole image and is put back in its previous mode."""
    was_training = model.training
    model.eval()
    rows = []
    try:
        for i in range(min(count, len(dataset))):
            item = dataset[i]
            image = item["image"]
            logits = forward_logits(model, image[None].to(device))
            prediction = logits.argmax(dim=1)[0].cpu().numpy()
            label = item["label"].cpu().numpy()
            rows.append(np.concatenate([denormalize(image), colorize(label), colorize(prediction)], axis=1))
    finally:
        model.train(was_training)
    width = max(row.shape[1] for row in rows)
    rows = [np.pad(row, ((0, 0), (0, width - row.shape[1]), (0, 0))) for row in rows]
    return np.concatenate(rows, axis=0)
