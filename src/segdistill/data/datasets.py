"""Segmentation datasets: Cityscapes (``leftImg8bit`` + ``gtFine`` labelIds) and a name registry
(which also holds the other standard datasets of :mod:`segdistill.data.standard`).

A sample is ``{"image": float32 3xHxW (ImageNet-normalised), "label": int64 HxW (train ids, 255 =
ignore), "name": str}``. Every problem with the files on disk raises :class:`UserError` with a
one-line message naming the offending path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from ..errors import UserError
from .labels import IGNORE_INDEX, PALETTE, TRAIN_CLASSES, VALID_LABEL_IDS, id_to_train_id_lut
from .samples import Transform, load_image, load_label, make_sample
from .standard import STANDARD_DATASETS

__all__ = [
    "DATASETS",
    "CityscapesDataset",
    "Transform",
    "build_dataset",
    "class_names",
    "dataset_class",
    "load_image",
    "load_label",
    "make_sample",
]

_IMAGE_SUFFIX = "_leftImg8bit.png"
_LABEL_SUFFIX = "_gtFine_labelIds.png"


class CityscapesDataset(Dataset):
    """Cityscapes fine annotations, labels mapped to the 19 train ids (255 = ignore).

    Layout: ``root/leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png`` paired with
    ``root/gtFine/<split>/<city>/<stem>_gtFine_labelIds.png``. ``transform(image=uint8 HxWx3,
    mask=uint8 HxW train ids)`` runs before normalisation. With ``check_labels`` every loaded label is
    checked for values outside the Cityscapes ids 0..33.
    """

    num_classes: int = 19
    ignore_index: int = IGNORE_INDEX
    class_names: list[str] = list(TRAIN_CLASSES)
    palette: np.ndarray = PALETTE  # 19 x 3 uint8, indexed by train id

    def __init__(
        self,
        root: str | Path,
        split: str,
        transform: Transform | None = None,
        check_labels: bool = True,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.transform = transform
        self.check_labels = check_labels
        self._lut = id_to_train_id_lut()
        self._valid = np.zeros(256, dtype=bool)
        self._valid[sorted(VALID_LABEL_IDS)] = True

        layout = f"leftImg8bit/{split}/<city>/*{_IMAGE_SUFFIX}"
        if not self.root.is_dir():
            raise UserError(f"Cityscapes root not found: {self.root}")
        image_dir = self.root / "leftImg8bit" / split
        if not image_dir.is_dir():
            raise UserError(f"Cityscapes split folder not found: {image_dir} (expected {self.root}/{layout})")
        self.images: list[Path] = sorted(image_dir.glob(f"*/*{_IMAGE_SUFFIX}"))
        if not self.images:
            raise UserError(f"no images in Cityscapes split folder {image_dir} (expected {self.root}/{layout})")
        self.labels: list[Path] = []
        for image_path in self.images:
            label_dir = self.root / "gtFine" / split / image_path.parent.name
            label_path = label_dir / f"{self._stem(image_path)}{_LABEL_SUFFIX}"
            if not label_path.is_file():
                raise UserError(f"no label for image {image_path}: expected {label_path}")
            self.labels.append(label_path)

    @staticmethod
    def _stem(image_path: Path) -> str:
        return image_path.name[: -len(_IMAGE_SUFFIX)]

    def __len__(self) -> int:
        return len(self.images)

    def _validate_label_ids(self, label: np.ndarray, path: Path) -> None:
        """Raise UserError naming ``path`` and the values if ``label`` has ids outside 0..33."""
        if label.dtype == np.uint8:
            present = np.flatnonzero(np.bincount(label.ravel(), minlength=256))
        else:
            present = np.unique(label)
        in_range = (present >= 0) & (present <= 255)
        bad = present[~in_range | ~self._valid[np.clip(present, 0, 255)]]
        if bad.size:
            shown = ", ".join(str(int(v)) for v in bad[:10]) + (", ..." if bad.size > 10 else "")
            raise UserError(f"label {path} has values not in the Cityscapes label table (valid ids 0..33): {shown}")

    def load_train_ids(self, index: int) -> np.ndarray:
        """The label of sample ``index`` as uint8 HxW train ids (255 = ignore), unaugmented."""
        path = self.labels[index]
        label = load_label(path)
        if self.check_labels:
            self._validate_label_ids(label, path)
        return self._lut[np.clip(label, 0, 255)]

    def __getitem__(self, index: int) -> dict[str, Any]:
        return make_sample(self.images[index], self.labels[index], self.load_train_ids(index), self.transform,
                           self._stem(self.images[index]))  # fmt: skip


# Every dataset by name: Cityscapes here, the other standard datasets from :mod:`.standard`.
DATASETS: dict[str, type[Dataset]] = {"cityscapes": CityscapesDataset, **STANDARD_DATASETS}


def dataset_class(name: str) -> type[Dataset]:
    """The dataset class registered under ``name``; UserError listing the valid names."""
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; valid names: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


def class_names(name: str) -> list[str]:
    """The class names of dataset ``name``, in train-id order."""
    return list(dataset_class(name).class_names)


def build_dataset(name: str, root: str | Path, split: str, transform: Transform | None = None) -> Dataset:
    """Instantiate the dataset registered under ``name`` (see :data:`DATASETS`)."""
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; valid names: {', '.join(sorted(DATASETS))}")
    return DATASETS[name](root, split, transform=transform)
