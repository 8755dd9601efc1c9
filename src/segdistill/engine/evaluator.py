"""Evaluation over a whole split: one confusion matrix, mIoU / per-class IoU / pixel accuracy."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn
from torch.utils.data import default_collate

from ..base.labels import IGNORE_INDEX
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
    base_size: int | None = None,
    keep_ratio: Sequence[int] | None = None,
    window_merge: str = "logits",
    ignore_index: int = IGNORE_INDEX,
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
            for images, labels, names in _same_size_groups(batch):
                images = images.to(device, non_blocking=True)
                labels = labels.to(device, non_blocking=True)
                scores = predict(
                    model,
                    images,
                    mode=mode,
                    window=window,
                    stride=stride,
                    scales=scales,
                    flip=flip,
                    base_size=base_size,
                    keep_ratio=keep_ratio,
                    window_merge=window_merge,
                )
                prediction = scores.argmax(dim=1)
                matrix.update(prediction, labels)
                if on_prediction is not None:
                    on_prediction(names, prediction)
                if on_batch is not None:
                    on_batch(images.shape[0])
    finally:
        model.train(was_training)
    matrix.all_reduce()
    return matrix.compute()


def _same_size_groups(batch: dict):
    """``(images B x 3 x H x W, labels B x H x W, names)``: the batch itself, or, from
    :func:`collate_eval` with images of different sizes, one image at a time."""
    names = list(batch.get("name", [""] * len(batch["image"])))
    if isinstance(batch["image"], torch.Tensor):
        yield batch["image"], batch["label"], names
        return
    for image, label, name in zip(batch["image"], batch["label"], names):
        yield image[None], label[None], [name]


def collate_eval(samples: list[dict]) -> dict:
    """The default collation when every image has the same size; lists otherwise (ADE20K, PASCAL
    images vary), so that ``eval.batch_size`` never fails and never changes a result."""
    if len({tuple(s["image"].shape) for s in samples}) == 1:
        return default_collate(samples)
    return {key: [s[key] for s in samples] for key in samples[0]}


def protocol(config) -> dict:
    """``evaluate`` keyword arguments for ``config.eval``'s protocol (window defaults to the crop
    size, stride to 2/3 of the window)."""
    cfg = config.eval
    window = cfg.crop_size or config.data.crop_size
    stride = cfg.stride or [max(1, (2 * w) // 3) for w in window]
    return {
        "mode": cfg.mode,
        "window": window,
        "stride": stride,
        "scales": cfg.scales,
        "flip": cfg.flip,
        "base_size": cfg.base_size,
        "keep_ratio": cfg.keep_ratio,
        "window_merge": cfg.window_merge,
    }
