"""Cityscapes-layout instance annotations -> COCO instance annotations.

Cityscapes stores instances in ``gtFine/<split>/<city>/<stem>_gtFine_instanceIds.png`` (16-bit):
a pixel of a thing instance holds ``label_id * 1000 + k``; a pixel of a thing class that could not
be split into instances (a crowd, e.g. a group of cars) holds the bare ``label_id``; stuff pixels hold
their label id. :func:`cityscapes_to_coco` turns one split into a COCO ``instances`` dict, the usual
conversion of Cityscapes for detectors:

* categories: the 8 evaluated Cityscapes thing classes (person, rider, car, truck, bus, train,
  motorcycle, bicycle), COCO ids 1..8 in that order (``caravan``/``trailer`` are not evaluated by
  Cityscapes and are left out);
* one annotation per instance: ``segmentation`` as compressed RLE (exact, no polygon approximation),
  ``bbox`` ``[x, y, w, h]`` the tight box of the mask in COCO's pixel convention (``w = x_max - x_min + 1``),
  ``area`` the pixel count, ``iscrowd`` 0;
* one ``iscrowd: 1`` annotation per image and thing class for crowd pixels (COCO evaluation ignores
  detections on them; the training loader drops them).

Images are referenced by ``file_name`` relative to the dataset root
(``leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png``), so the loader reads them in place.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..data.datasets import load_label
from ..data.labels import LABELS
from ..errors import UserError

# The 8 Cityscapes classes evaluated for instance segmentation, in train-id order.
THING_LABELS = tuple(label for label in LABELS if label.has_instances and not label.ignore_in_eval)
THING_IDS: tuple[int, ...] = tuple(label.id for label in THING_LABELS)  # Cityscapes label ids 24..33
CATEGORIES: list[dict[str, Any]] = [
    {"id": i + 1, "name": label.name, "supercategory": label.category, "cityscapes_id": label.id}
    for i, label in enumerate(THING_LABELS)
]
_CATEGORY_OF_LABEL = {label.id: i + 1 for i, label in enumerate(THING_LABELS)}

_IMAGE_SUFFIX = "_leftImg8bit.png"
_INSTANCE_SUFFIX = "_gtFine_instanceIds.png"


def _mask_code():
    try:
        from pycocotools import mask as mask_code
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise UserError("COCO annotations need pycocotools: pip install 'segdistill[detection]'") from exc
    return mask_code


def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """Compressed RLE of a binary ``H x W`` mask, JSON-ready (``counts`` as str)."""
    rle = _mask_code().encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def decode_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """A COCO ``segmentation`` (polygons, compressed or uncompressed RLE) -> binary uint8 ``H x W``."""
    mask_code = _mask_code()
    if isinstance(segmentation, list):  # polygons
        rles = mask_code.frPyObjects(segmentation, height, width)
        return mask_code.decode(mask_code.merge(rles))
    if isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):  # uncompressed RLE
        rle = mask_code.frPyObjects(segmentation, height, width)
        return mask_code.decode(rle)
    return mask_code.decode(segmentation)


def mask_bbox(mask: np.ndarray) -> list[float]:
    """COCO ``[x, y, w, h]`` of the tight box around a non-empty binary mask (pixel units, inclusive)."""
    ys, xs = np.nonzero(mask)
    x0, x1, y0, y1 = int(xs.min()), int(xs.max()), int(ys.min()), int(ys.max())
    return [float(x0), float(y0), float(x1 - x0 + 1), float(y1 - y0 + 1)]


def instance_annotations(instance_ids: np.ndarray) -> list[dict[str, Any]]:
    """Annotations (without ``id``/``image_id``) of one ``H x W`` instanceIds array, in ascending value
    order: thing instances (``iscrowd`` 0) and per-class crowd regions (``iscrowd`` 1)."""
    annotations = []
    for value in np.unique(instance_ids):
        value = int(value)
        label_id, crowd = (value // 1000, False) if value >= 1000 else (value, True)
        category = _CATEGORY_OF_LABEL.get(label_id)
        if category is None:
            continue  # stuff, void, or a thing class Cityscapes does not evaluate
        mask = instance_ids == value
        annotations.append(
            {
                "category_id": category,
                "segmentation": encode_mask(mask),
                "area": float(mask.sum()),
                "bbox": mask_bbox(mask),
                "iscrowd": int(crowd),
                "instance_id": value,
            }
        )
    return annotations


def cityscapes_to_coco(root: str | Path, split: str) -> dict[str, Any]:
    """The COCO instances dict of ``root``'s ``split`` (Cityscapes layout); see the module docstring."""
    root = Path(root)
    image_dir = root / "leftImg8bit" / split
    if not image_dir.is_dir():
        raise UserError(f"no {split!r} split: {image_dir} is not a directory")
    image_paths = sorted(image_dir.glob(f"*/*{_IMAGE_SUFFIX}"))
    if not image_paths:
        raise UserError(f"split {split!r} is empty: no *{_IMAGE_SUFFIX} under {image_dir}")
    images, annotations = [], []
    for image_id, image_path in enumerate(image_paths, start=1):
        stem = image_path.name[: -len(_IMAGE_SUFFIX)]
        instance_path = root / "gtFine" / split / image_path.parent.name / f"{stem}{_INSTANCE_SUFFIX}"
        if not instance_path.is_file():
            raise UserError(f"image {image_path} has no instance annotation {instance_path}")
        instance_ids = load_label(instance_path).astype(np.int64)
        height, width = instance_ids.shape
        images.append(
            {
                "id": image_id,
                "file_name": image_path.relative_to(root).as_posix(),
                "height": int(height),
                "width": int(width),
            }
        )
        for annotation in instance_annotations(instance_ids):
            annotation.update(id=len(annotations) + 1, image_id=image_id)
            annotations.append(annotation)
    return {
        "info": {"description": f"{root.name} {split}, converted from Cityscapes instanceIds by segdistill"},
        "images": images,
        "annotations": annotations,
        "categories": CATEGORIES,
    }


def annotation_path(root: str | Path, split: str) -> Path:
    """Where :func:`write_coco` puts a split's annotations: ``<root>/annotations/instances_<split>.json``."""
    return Path(root) / "annotations" / f"instances_{split}.json"


def write_coco(root: str | Path, split: str, out: str | Path | None = None) -> Path:
    """Convert ``split`` and write it atomically (``out`` or :func:`annotation_path`); returns the path."""
    coco = cityscapes_to_coco(root, split)
    path = Path(out) if out is not None else annotation_path(root, split)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "w") as handle:
            json.dump(coco, handle)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return path
