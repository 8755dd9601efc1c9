"""Evaluation over a whole split: one confusion matrix, mIoU / per-class IoU / pixel accuracy."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from .inference import predict
from .metrics import ConfusionMatrix


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[dict],
    num_classes: int,
    device: torch.device | str = "cpu",
    *,
    mode: str = "whole",
    window: Sequence[int] | None = None,
    stride: Sequence[int] | None = None,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    ignore_index: int = 255,
    on_batch: Callable[[int], None] | None = None,
    on_prediction: Callable[[list[str], torch.Tensor], None] | None = None,
) -> dict:
    """Run ``model`` (in eval mode) over ``loader`` batches ``{"image", "label"}`` and return
    ``ConfusionMatrix.compute()`` (all-reduced under DDP). Restores the model's train/eval mode.
    ``on_prediction(names, predictions B x H x W train ids)`` receives every batch's predictions."""
    was_training = model.training
    model.eval()
    matrix = ConfusionMatrix(num_classes, ignore_index, device=device)
    try:
        for batch in loader:
            images = batch["image"].to(device, non_blocking=True)
            labels = batch["label"].to(device, non_blocking=True)
            scores = predict(model, images, mode=mode, window=window, stride=stride, scales=scales, flip=flip)
            prediction = scores.argmax(dim=1)
            matrix.update(prediction, labels)
            if on_prediction is not None:
                on_prediction(list(batch["name"]), prediction)
            if on_batch is not None:
                on_batch(images.shape[0])
    finally:
        model.train(was_training)
    matrix.all_reduce()
    return matrix.compute()
