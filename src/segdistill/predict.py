"""``segdistill predict``: colourised masks and overlays for images, with a trained checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .base.schema import build_section
from .config import ModelConfig
from .data.datasets import DATASETS, load_image
from .data.transforms import normalize
from .engine.builders import build_model
from .engine.checkpoint import load_checkpoint
from .engine.inference import predict
from .errors import UserError


def palette_for(num_classes: int, dataset: str) -> np.ndarray:
    """The dataset's own palette (Cityscapes-style data has one); otherwise a fixed, well-spread palette."""
    palette = getattr(DATASETS.get(dataset), "palette", None)
    if palette is not None and num_classes <= len(palette):
        return palette[:num_classes]
    rng = np.random.default_rng(12345)  # the same colours on every run
    return rng.integers(40, 256, size=(num_classes, 3), dtype=np.uint8)


def model_from_checkpoint(checkpoint: str | Path) -> tuple[torch.nn.Module, dict]:
    """The model and the config saved in a segdistill training checkpoint."""
    state = load_checkpoint(checkpoint)
    if "model" not in state or "config" not in state:
        raise UserError(f"{checkpoint} is not a segdistill training checkpoint (no 'model'/'config' entry)")
    saved = dict(state["config"]["model"])
    if saved.get("source", "segdistill") == "segdistill":
        saved["pretrained"] = False  # the checkpoint holds every weight; no timm download
    cfg = build_section(ModelConfig, {**saved, "weights": None}, "model.")
    model = build_model(cfg)
    model.load_state_dict(state["model"])
    return model.eval(), state["config"]


@torch.no_grad()
def predict_images(checkpoint: str, images: list[str], out: str, alpha: float = 0.5) -> list[Path]:
    """Write ``<stem>_mask.png`` (class colours) and ``<stem>_overlay.png`` (blended over the image)
    for each image; returns the written paths."""
    model, config = model_from_checkpoint(checkpoint)
    palette = palette_for(int(config["model"]["num_classes"]), config["data"]["dataset"])
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in images:
        if not Path(path).is_file():
            raise UserError(f"image not found: {path}")
        rgb = load_image(path)
        scores = predict(model, normalize(rgb)[None])
        mask = palette[scores.argmax(dim=1)[0].numpy()]
        overlay = (alpha * mask + (1 - alpha) * rgb).round().astype(np.uint8)
        stem = Path(path).stem
        for suffix, array in (("mask", mask), ("overlay", overlay)):
            target = out_dir / f"{stem}_{suffix}.png"
            Image.fromarray(array).save(target)
            written.append(target)
    return written
