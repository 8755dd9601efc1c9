"""Figures of a ``segdistill bench`` grid (matplotlib, PNG): training curves, per-class IoU by method,
prediction panels, and t-SNE of pixel features (teacher, baseline student, APD student)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..base.labels import IGNORE_INDEX
from ..data.labels import PALETTE
from ..distill.common import resize_labels
from ..distill.taps import TapRecorder


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def training_curves(run_dirs: dict[str, list[Path]], path: Path) -> None:
    """Cross-entropy (mean over seeds, per log step) of every method, one line each."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for method, dirs in run_dirs.items():
        curves = []
        for run in dirs:
            records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
            curves.append({r["step"]: r["ce"] for r in records if "ce" in r})
        steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
        if steps:
            ax.plot(steps, [np.mean([c[s] for c in curves]) for s in steps], label=method)
    ax.set_xlabel("iteration")
    ax.set_ylabel("student cross-entropy (mean over seeds)")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def per_class_bars(rows: dict[str, dict], names: list[str], path: Path) -> None:
    """Grouped bars: per-class IoU (mean over seeds) of each method; classes no method predicts are left out."""
    plt = _plt()
    keep = [c for c in range(len(names)) if any((row["per_class"][c] or 0) > 0 for row in rows.values())]
    width = 0.8 / max(len(rows), 1)
    fig, ax = plt.subplots(figsize=(max(8, 0.7 * len(keep) * max(1, len(rows) / 4)), 4))
    for i, (method, row) in enumerate(rows.items()):
        values = [100 * (row["per_class"][c] or 0.0) for c in keep]
        ax.bar(np.arange(len(keep)) + i * width, values, width, label=method)
    ax.set_xticks(np.arange(len(keep)) + 0.4 - width / 2)
    ax.set_xticklabels([names[c] for c in keep], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("IoU (%)")
    ax.legend(fontsize=7, ncol=5)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@torch.no_grad()
def pixel_features(model: nn.Module, tap: str, images: torch.Tensor, labels: torch.Tensor, per_class: int, seed: int):
    """Features of module ``tap`` at labelled pixels (labels resized nearest to the feature grid),
    at most ``per_class`` pixels of each class: ``(N x C features, N labels)``."""

    recorder = TapRecorder(model, {"f": tap}, "model")
    was_training = model.training
    model.eval()
    try:
        model(images)
        feat = recorder.collect()["f"].float()
    finally:
        recorder.remove()
        model.train(was_training)
    small = resize_labels(labels, tuple(feat.shape[-2:]))
    feats = feat.permute(0, 2, 3, 1).reshape(-1, feat.shape[1])
    classes = small.reshape(-1)
    rng = np.random.default_rng(seed)
    chosen = []
    for c in classes.unique().tolist():
        if c == IGNORE_INDEX:
            continue
        index = (classes == c).nonzero()[:, 0].numpy()
        chosen.extend(rng.choice(index, size=min(per_class, len(index)), replace=False).tolist())
    chosen = np.array(sorted(chosen))
    return feats[chosen].numpy(), classes[chosen].numpy()


def tsne_figure(
    models: dict[str, nn.Module], taps: dict[str, str], images, labels, names: list[str], path: Path
) -> None:
    """t-SNE (scikit-learn) of each model's pixel features (``taps[title]``, a module name, ``:input``
    allowed) at the same pixels, coloured by class."""
    from sklearn.manifold import TSNE

    plt = _plt()
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 4.2), squeeze=False)
    for ax, (title, model) in zip(axes[0], models.items()):
        feats, classes = pixel_features(model, taps[title], images, labels, per_class=150, seed=0)
        feats = feats / (np.linalg.norm(feats, axis=1, keepdims=True) + 1e-6)
        perplexity = float(min(30, max(2, (len(feats) - 1) // 3)))
        points = TSNE(n_components=2, init="pca", random_state=0, perplexity=perplexity).fit_transform(feats)
        colours = PALETTE[np.clip(classes, 0, len(PALETTE) - 1)] / 255.0 if len(names) <= len(PALETTE) else None
        ax.scatter(points[:, 0], points[:, 1], s=3, c=colours if colours is not None else classes, cmap=None)
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
