"""Reading one sample from disk: images and label PNGs (one-line errors naming the file) and the
sample every segmentation dataset returns: ``{"image": float32 3xHxW (ImageNet-normalised),
"label": int64 HxW (train ids, 255 = ignore), "name": str}``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import UserError
from .transforms import normalize

Transform = Callable[..., dict[str, Any]]

# Exceptions PIL raises for missing, truncated or malformed files (UnidentifiedImageError is an
# OSError; broken PNG chunks raise SyntaxError; DecompressionBombError is its own class).
_PIL_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file as RGB uint8 HxWx3; UserError naming the file if it cannot be decoded."""
    try:
        with Image.open(path) as img:
            array = np.array(img.convert("RGB"), dtype=np.uint8)
    except _PIL_ERRORS as exc:
        raise UserError(f"cannot read image {path}: {_one_line(exc)}") from exc
    return np.ascontiguousarray(array)


def load_label(path: str | Path) -> np.ndarray:
    """Read a single-channel label PNG as an integer HxW array (uint8 for 8-bit files, as stored)."""
    try:
        with Image.open(path) as img:
            if img.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L"):
                raise UserError(f"label {path} must be a single-channel image, got mode {img.mode}")
            array = np.array(img)
    except _PIL_ERRORS as exc:
        raise UserError(f"cannot read label {path}: {_one_line(exc)}") from exc
    return np.ascontiguousarray(array)


def read_image_for(image_path: Path, label_path: Path, mask: np.ndarray) -> np.ndarray:
    """The image of a sample (RGB uint8 HxWx3), checked to have its label ``mask``'s size."""
    image = load_image(image_path)
    if image.shape[:2] != mask.shape:
        raise UserError(
            f"image {image_path} is {image.shape[1]}x{image.shape[0]} (WxH) but its label "
            f"{label_path} is {mask.shape[1]}x{mask.shape[0]}"
        )
    return image


def finish_sample(image: np.ndarray, mask: np.ndarray, transform: Transform | None, name: str) -> dict[str, Any]:
    """Augment a decoded image (uint8 HxWx3) and its train ids (uint8 HxW) together, normalise:
    ``{"image": float32 3xHxW, "label": int64 HxW, "name"}``. The inputs are not modified."""
    if transform is not None:
        out = transform(image=image, mask=mask)
        image, mask = out["image"], out["mask"]
    return {
        "image": normalize(image),
        "label": torch.from_numpy(np.array(mask, dtype=np.int64)),
        "name": name,
    }


def make_sample(
    image_path: Path, label_path: Path, mask: np.ndarray, transform: Transform | None, name: str
) -> dict[str, Any]:
    """Read the image, check it matches its label ``mask`` (train ids, uint8 HxW), augment both,
    normalise: ``{"image": float32 3xHxW, "label": int64 HxW, "name"}``."""
    return finish_sample(read_image_for(image_path, label_path, mask), mask, transform, name)
