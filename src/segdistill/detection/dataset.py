"""A COCO-layout detection / instance-segmentation dataset (real COCO, converted Cityscapes, ours).

A sample is ``(image, target)``: ``image`` float32 ``3 x H x W`` in [0, 1] (torchvision's detectors
normalise inside), ``target`` a dict with ``boxes`` float32 ``N x 4`` (x1, y1, x2, y2, pixels),
``labels`` int64 ``N`` (contiguous 1..K, 0 is background), ``masks`` uint8 ``N x H x W`` (when
``masks=True``), ``image_id`` (the COCO id) and, for an image with crowd annotations
(``iscrowd: 1``), ``ignore`` uint8 ``H x W`` (their pixels: masks, or boxes without ``masks``). Crowds are
not detection targets, as in torchvision's reference scripts (COCO evaluation still sees them);
APD ignores their pixels.

Every problem with the files raises :class:`~segdistill.errors.UserError` naming the file (and the
annotation id where one is at fault).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..data.datasets import load_image
from ..errors import UserError
from .coco import decode_mask


def load_coco_json(path: str | Path) -> dict[str, Any]:
    """Read and sanity-check a COCO instances file (``images``, ``annotations``, ``categories``)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"COCO annotation file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"COCO annotation file {path} is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise UserError(f"COCO annotation file {path} must hold an object with images, annotations, categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise UserError(f"COCO annotation file {path} has no {key!r} list")
    if not data["categories"]:
        raise UserError(f"COCO annotation file {path} lists no categories")
    if not data["images"]:
        raise UserError(f"COCO annotation file {path} lists no images")
    return data


def hflip_target(target: dict[str, torch.Tensor], width: int) -> dict[str, torch.Tensor]:
    """Mirror boxes (and masks) of an image ``width`` pixels wide."""
    out = dict(target)
    boxes = target["boxes"].clone()
    boxes[:, 0], boxes[:, 2] = width - target["boxes"][:, 2], width - target["boxes"][:, 0]
    out["boxes"] = boxes
    for key in ("masks", "ignore"):
        if key in target:
            out[key] = target[key].flip(-1)
    return out


class CocoDetection(Dataset):
    """Images under ``root / image_dir`` described by the COCO file ``ann_file``.

    ``masks``: also decode instance masks (polygons or RLE). ``flip_p``: horizontal flip probability
    (training augmentation; the flip of sample ``i`` is drawn from the seed set by
    :meth:`set_sample_seed`, so order and augmentation are reproducible on resume)."""

    def __init__(
        self,
        root: str | Path,
        ann_file: str | Path,
        image_dir: str = "",
        *,
        masks: bool = False,
        flip_p: float = 0.0,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise UserError(f"dataset root not found: {self.root}")
        self.ann_file = Path(ann_file)
        self.data = load_coco_json(self.ann_file)
        self.image_dir = self.root / image_dir
        self.masks = masks
        self.flip_p = flip_p
        self._rng = np.random.default_rng(0)
        categories = sorted(self.data["categories"], key=lambda c: c["id"])
        self.category_ids = [int(c["id"]) for c in categories]  # label i + 1 -> COCO id
        self.label_of = {cid: i + 1 for i, cid in enumerate(self.category_ids)}
        self.class_names = [str(c["name"]) for c in categories]
        for i, image in enumerate(self.data["images"]):
            if not (isinstance(image, dict) and isinstance(image.get("id"), int) and image.get("file_name")):
                raise UserError(f"{self.ann_file}: images[{i}] needs an integer 'id' and a 'file_name'")
        self.images = sorted(self.data["images"], key=lambda im: im["id"])
        self.annotations: dict[int, list[dict]] = {int(im["id"]): [] for im in self.images}
        for ann in self.data["annotations"]:
            if not isinstance(ann, dict) or not isinstance(ann.get("image_id"), int):
                raise UserError(f"{self.ann_file}: annotation {_ann_id(ann)} has no integer image_id")
            image_id = int(ann["image_id"])
            if image_id not in self.annotations:
                raise UserError(f"{self.ann_file}: annotation {ann.get('id')} refers to unknown image {image_id}")
            if int(ann.get("category_id", -1)) not in self.label_of:
                raise UserError(
                    f"{self.ann_file}: annotation {ann.get('id')} has category_id {ann.get('category_id')}, "
                    f"which is not in categories ({', '.join(map(str, self.category_ids))})"
                )
            self.annotations[image_id].append(ann)

    @property
    def num_classes(self) -> int:
        """Categories + background."""
        return len(self.category_ids) + 1

    def __len__(self) -> int:
        return len(self.images)

    def set_sample_seed(self, seed: int) -> None:
        """Seed the augmentation of the next sample (see :class:`~segdistill.data.sampling.SeededSamples`)."""
        self._rng = np.random.default_rng(seed)

    def image_path(self, index: int) -> Path:
        return self.image_dir / self.images[index]["file_name"]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        info = self.images[index]
        path = self.image_path(index)
        if not path.is_file():
            raise UserError(f"image not found: {path} (listed in {self.ann_file})")
        array = load_image(path)
        height, width = array.shape[:2]
        if (height, width) != (int(info.get("height", height)), int(info.get("width", width))):
            raise UserError(
                f"image {path} is {width}x{height} but {self.ann_file} says {info['width']}x{info['height']}"
            )
        image = torch.from_numpy(array).permute(2, 0, 1).float().div_(255.0)
        target = self._target(info, height, width)
        if self.flip_p > 0 and self._rng.random() < self.flip_p:
            image = image.flip(-1)
            target = hflip_target(target, width)
        return image, target

    def _target(self, info: dict, height: int, width: int) -> dict[str, torch.Tensor]:
        boxes, labels, masks = [], [], []
        crowd = np.zeros((height, width), dtype=bool)
        for ann in self.annotations[int(info["id"])]:
            try:
                box = self._box(ann, info, height, width)
                if box is None:
                    continue
                mask = self._mask(ann, height, width) if self.masks else None
            except (KeyError, TypeError, ValueError, IndexError) as exc:  # malformed fields, bad RLE/polygons
                raise UserError(
                    f"{self.ann_file}: annotation {_ann_id(ann)} is malformed ({type(exc).__name__}: {exc})"
                ) from exc
            if ann.get("iscrowd", 0):  # not a training target; APD ignores its pixels
                if mask is not None:
                    crowd |= mask.astype(bool)
                else:
                    x1, y1, x2, y2 = (int(round(v)) for v in box)
                    crowd[y1:y2, x1:x2] = True
                continue
            boxes.append(box)
            labels.append(self.label_of[int(ann["category_id"])])
            if mask is not None:
                masks.append(mask)
        target = {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "image_id": torch.tensor(int(info["id"])),
        }
        if self.masks:
            stacked = np.stack(masks) if masks else np.zeros((0, height, width), dtype=np.uint8)
            target["masks"] = torch.from_numpy(stacked.astype(np.uint8))
        if crowd.any():
            target["ignore"] = torch.from_numpy(crowd.astype(np.uint8))  # H x W, crowd regions
        return target

    def _box(self, ann: dict, info: dict, height: int, width: int) -> list[float] | None:
        """The annotation's box as x1, y1, x2, y2 clipped to the image; None for a degenerate box."""
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4):
            raise UserError(f"{self.ann_file}: annotation {_ann_id(ann)} has no [x, y, w, h] bbox")
        x, y, w, h = (float(v) for v in bbox)
        if x < -1 or y < -1 or x + w > width + 1 or y + h > height + 1:
            raise UserError(
                f"{self.ann_file}: annotation {_ann_id(ann)} bbox {bbox} lies outside its "
                f"{width}x{height} image {info['file_name']}"
            )
        x1, y1, x2, y2 = max(x, 0.0), max(y, 0.0), min(x + w, float(width)), min(y + h, float(height))
        if x2 - x1 < 1 or y2 - y1 < 1:
            return None  # degenerate boxes are skipped, as torchvision's reference does
        return [x1, y1, x2, y2]

    def _mask(self, ann: dict, height: int, width: int) -> np.ndarray:
        if "segmentation" not in ann:
            raise UserError(
                f"{self.ann_file}: annotation {_ann_id(ann)} has no segmentation, which Mask R-CNN and APD's "
                "mask target need; for box-only data use a faster_rcnn model and distill.options.apd.target: boxes"
            )
        mask = decode_mask(ann["segmentation"], height, width)
        if mask.shape != (height, width):
            raise UserError(
                f"{self.ann_file}: annotation {_ann_id(ann)} has a {mask.shape[1]}x{mask.shape[0]} mask "
                f"for a {width}x{height} image"
            )
        return mask


def _ann_id(ann: object) -> object:
    return ann.get("id") if isinstance(ann, dict) else ann


def collate_detection(batch: list) -> tuple[list[torch.Tensor], list[dict]]:
    """``[(image, target), ...]`` -> ``(images, targets)``: lists, since images may differ in size."""
    images, targets = zip(*batch)
    return list(images), list(targets)
