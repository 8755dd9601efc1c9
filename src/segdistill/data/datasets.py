"""The segmentation datasets by name: importing this module registers every shipped dataset.

``cityscapes`` and ``synthetic`` (:mod:`.cityscapes`), ``ade20k``, ``pascal_context``,
``pascal_context_59``, ``voc_aug`` and ``camvid`` (:mod:`.standard`), all
:class:`~segdistill.data.paired.PairedFolderDataset` subclasses in :data:`DATASETS`. A user's own
dataset subclasses ``PairedFolderDataset``, decorates itself with :func:`register`, and is then
named in a config like the shipped ones.
"""

from __future__ import annotations

from .cityscapes import CityscapesDataset, SyntheticDataset
from .paired import (
    DATASETS,
    PairedFolderDataset,
    build_dataset,
    class_names,
    dataset_class,
    lookup_table,
    prepare_dataset,
    register,
)
from .samples import Transform, load_image, load_label, make_sample
from .standard import ADE20KDataset, CamVidDataset, PascalContext59Dataset, PascalContextDataset, VOCAugDataset

__all__ = [
    "DATASETS",
    "ADE20KDataset",
    "CamVidDataset",
    "CityscapesDataset",
    "PairedFolderDataset",
    "PascalContext59Dataset",
    "PascalContextDataset",
    "SyntheticDataset",
    "Transform",
    "VOCAugDataset",
    "build_dataset",
    "class_names",
    "dataset_class",
    "load_image",
    "load_label",
    "lookup_table",
    "make_sample",
    "prepare_dataset",
    "register",
]
