"""The dataset registry and the paired-folder dataset that every segmentation dataset here is.

A dataset is a :class:`PairedFolderDataset` subclass (images paired with single-channel label PNGs,
stored label values mapped to train ids through a table) that registers itself under its ``name``
with :func:`register`. Everything that turns a name into a dataset (the config's ``data.dataset``,
the CLI, bench) reads :data:`DATASETS`; nothing else lists dataset names.

A sample is ``{"image": float32 3xHxW (ImageNet-normalised), "label": int64 HxW (train ids, 255 =
ignore), "name": str}``. Every problem with the files on disk raises :class:`UserError` with a
one-line message naming the offending path.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from torch.utils.data import Dataset

from ..base.schema import did_you_mean
from ..errors import UserError
from .labels import IGNORE_INDEX
from .samples import Transform, finish_sample, load_label, read_image_for

Log = Callable[[str], None]


def lookup_table(mapping: dict[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``(lut, valid)``: uint8[256] stored value -> train id (255 elsewhere), bool[256] allowed values."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    valid = np.zeros(256, dtype=bool)
    for stored, train_id in mapping.items():
        lut[stored] = train_id
        valid[stored] = True
    return lut, valid


def value_runs(values: list[int]) -> str:
    """``[0, 1, 2, 5, 255]`` -> ``'0..2, 5, 255'``."""
    runs, start = [], values[0]
    for a, b in zip(values, values[1:] + [None]):
        if b != a + 1:
            runs.append(f"{start}" if start == a else f"{start}..{a}")
            start = b
    return ", ".join(runs)


class PairedFolderDataset(Dataset, ABC):
    """Images paired with single-channel label PNGs; subclasses list the pairs and the label table.

    Subclasses set ``name``, ``class_names``, ``layout`` (shown in errors) and ``label_mapping``
    (stored value -> train id; stored values not in it are errors) and implement :meth:`pairs`.
    ``transform(image=uint8 HxWx3, mask=uint8 HxW train ids)`` runs before normalisation. With
    ``check_labels`` every loaded label is checked against the table (files are read lazily).
    """

    name = "dataset"
    class_names: tuple[str, ...] = ()
    layout = ""
    label_mapping: dict[int, int] = {}
    ignore_index = IGNORE_INDEX

    def __init__(
        self,
        root: str | Path,
        split: str,
        transform: Transform | None = None,
        check_labels: bool = True,
        cache: bool = False,
    ):
        self.root = self.resolve_root(Path(root))
        self.split = split
        self.transform = transform
        self.check_labels = check_labels
        # index -> (image uint8 HxWx3, train ids uint8 HxW), decoded and checked once (data.cache)
        self._decoded: dict[int, tuple[np.ndarray, np.ndarray]] | None = {} if cache else None
        self._lut, self._valid = lookup_table(self.label_mapping)
        self.images: list[Path] = []
        self.labels: list[Path] = []
        for image, label in self.pairs(split):
            if not label.is_file():
                raise UserError(f"no label for image {image}: expected {label}")
            self.images.append(image)
            self.labels.append(label)
        if not self.images:
            raise UserError(f"{self.name}: no images for split {split!r} under {self.root} (expected {self.layout})")

    @classmethod
    def prepare(cls, root: str | Path, log: Log) -> None:
        """Make ``root`` readable before the first read; real datasets are already on disk (no-op)."""

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

    def sample_name(self, image: Path) -> str:
        """The sample's ``name`` (file stem by default)."""
        return image.stem

    def label_set(self) -> str:
        """How error messages name the allowed stored values."""
        return f"the {self.name} label set (valid {value_runs(sorted(self.label_mapping))})"

    def __len__(self) -> int:
        return len(self.images)

    def load_train_ids(self, index: int) -> np.ndarray:
        """The label of sample ``index`` as uint8 HxW train ids (255 = ignore), unaugmented."""
        path = self.labels[index]
        label = load_label(path)
        if label.dtype != np.uint8:
            if label.min() < 0 or label.max() > 255:
                bad = np.unique(label[(label < 0) | (label > 255)])[:10]
                raise UserError(f"label {path} has values not in {self.label_set()}: {', '.join(map(str, bad))}")
            label = label.astype(np.uint8)
        if self.check_labels:
            present = np.flatnonzero(np.bincount(label.ravel(), minlength=256))
            bad = present[~self._valid[present]]
            if bad.size:
                shown = ", ".join(str(int(v)) for v in bad[:10]) + (", ..." if bad.size > 10 else "")
                raise UserError(f"label {path} has values not in {self.label_set()}: {shown}")
        return self._lut[label]

    def decoded(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample ``index`` decoded and checked, unaugmented: the image (RGB uint8 HxWx3) and its train
        ids (uint8 HxW). With ``cache`` (``data.cache``) each file is read once and kept in memory; the
        arrays are shared between reads, so nothing downstream may modify them (none does)."""
        if self._decoded is not None and index in self._decoded:
            return self._decoded[index]
        mask = self.load_train_ids(index)
        pair = (read_image_for(self.images[index], self.labels[index], mask), mask)
        if self._decoded is not None:
            self._decoded[index] = pair
        return pair

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, mask = self.decoded(index)
        return finish_sample(image, mask, self.transform, self.sample_name(self.images[index]))


# Every dataset by name, filled by @register in the dataset modules (imported by data.datasets).
DATASETS: dict[str, type[PairedFolderDataset]] = {}

D = TypeVar("D", bound=type[PairedFolderDataset])


def register(cls: D) -> D:
    """Class decorator: make ``cls`` buildable by its ``name`` (a second class under one name is an error)."""
    if DATASETS.get(cls.name, cls) is not cls:
        raise ValueError(f"dataset name {cls.name!r} is already registered by {DATASETS[cls.name].__qualname__}")
    DATASETS[cls.name] = cls
    return cls


def dataset_class(name: str) -> type[PairedFolderDataset]:
    """The dataset class registered under ``name``; UserError listing the valid names."""
    if name not in DATASETS:
        hint = did_you_mean(name, DATASETS, cutoff=0.5)
        raise UserError(f"unknown dataset {name!r}{hint}; valid names: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


def class_names(name: str) -> list[str]:
    """The class names of dataset ``name``, in train-id order."""
    return list(dataset_class(name).class_names)


def prepare_dataset(name: str, root: str | Path, log: Log) -> None:
    """Run dataset ``name``'s preparation at ``root`` (the synthetic one generates itself if absent)."""
    dataset_class(name).prepare(root, log)


def build_dataset(
    name: str, root: str | Path, split: str, transform: Transform | None = None, cache: bool = False
) -> PairedFolderDataset:
    """Instantiate the dataset registered under ``name`` (see :data:`DATASETS`); ``cache`` keeps every
    decoded sample in memory after its first read."""
    return dataset_class(name)(root, split, transform=transform, cache=cache)
