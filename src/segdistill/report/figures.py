"""Prediction panels: image | ground truth | each model's prediction, coloured with the dataset palette."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..data.labels import colorize
from ..data.transforms import denormalize
from ..engine.inference import predict


@torch.no_grad()
def prediction_panel(
    models: dict[str, nn.Module],
    samples: list[dict],
    path: str | Path,
    device: torch.device | str = "cpu",
) -> None:
    """Save a PNG grid: one row per sample, columns image | ground truth | one per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 2 + len(models)
    height, width = samples[0]["image"].shape[-2:]
    fig, axes = plt.subplots(
        len(samples), cols, figsize=(2.2 * cols * width / height, 2.3 * len(samples)), squeeze=False
    )
    for row, sample in enumerate(samples):
        images = sample["image"][None].to(device)
        panels = [
            ("image", denormalize(sample["image"])),
            ("ground truth", colorize(sample["label"].numpy())),
        ]
        for name, model in models.items():
            was_training = model.training
            model.eval()
            pred = predict(model, images).argmax(1)[0].cpu().numpy()
            model.train(was_training)
            panels.append((name, colorize(pred)))
        for col, (title, image) in enumerate(panels):
            ax = axes[row][col]
            ax.imshow(image)
            ax.set_axis_off()
            if row == 0:
                ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
