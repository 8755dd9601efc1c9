"""Confusion-matrix segmentation metrics (one matrix over the whole split, never per-image means)."""

from __future__ import annotations

import numpy as np
import torch

from ..base.labels import IGNORE_INDEX


class ConfusionMatrix:
    """Accumulates a ``K x K`` confusion matrix (rows: ground truth, columns: prediction).

    ``update(pred, target)`` takes integer tensors of equal shape; pixels whose target equals
    ``ignore_index`` are skipped. Implemented with one ``torch.bincount`` over ``K * gt + pred``.
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX, device: torch.device | str = "cpu") -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
        valid = target != self.ignore_index
        if bool((target[valid] >= self.num_classes).any() or (target[valid] < 0).any()):
            bad = torch.unique(target[valid & ((target >= self.num_classes) | (target < 0))])[:5].tolist()
            raise ValueError(f"target holds class ids {bad} outside 0..{self.num_classes - 1} and not ignore")
        index = self.num_classes * target[valid].long() + pred[valid].long()
        counts = torch.bincount(index, minlength=self.num_classes**2)
        self.matrix += counts.reshape(self.num_classes, self.num_classes).to(self.matrix.device)

    def all_reduce(self) -> None:
        """Sum the matrix over DDP ranks (no-op when torch.distributed is not initialised)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self.matrix)

    def compute(self) -> dict:
        """Per-class IoU (NaN for classes absent from both prediction and ground truth), mIoU over
        the classes that are not NaN, pixel accuracy and mean class accuracy."""
        m = self.matrix.double().cpu().numpy()
        tp = np.diag(m)
        gt = m.sum(axis=1)
        pred = m.sum(axis=0)
        union = gt + pred - tp
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where(union > 0, tp / union, np.nan)
            acc = np.where(gt > 0, tp / gt, np.nan)
        total = m.sum()
        return {
            "mIoU": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
            "pixel_acc": float(tp.sum() / total) if total > 0 else float("nan"),
            "mean_acc": float(np.nanmean(acc)) if np.isfinite(acc).any() else float("nan"),
            "iou": [None if np.isnan(v) else float(v) for v in iou],
        }
