"""Cityscapes (``leftImg8bit`` + ``gtFine`` labelIds, 19 train ids) and the embedded default dataset,
``synthetic``: generated street scenes in the same layout, generated at its root when absent."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import UserError
from .labels import PALETTE, TRAIN_CLASSES, VALID_LABEL_IDS, id_to_train_id_lut
from .paired import Log, PairedFolderDataset, register
from .synthetic import generate_dataset, read_params

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"


def _cityscapes_mapping() -> dict[int, int]:
    """labelId -> train id (255 for the ids that are not trained on), for the ids 0..33."""
    lut = id_to_train_id_lut()
    return {label_id: int(lut[label_id]) for label_id in sorted(VALID_LABEL_IDS)}


@register
class CityscapesDataset(PairedFolderDataset):
    """Cityscapes fine annotations, labels mapped to the 19 train ids (255 = ignore).

    Layout: ``root/leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png`` paired with
    ``root/gtFine/<split>/<city>/<stem>_gtFine_labelIds.png``; a sample's name is ``<stem>``.
    """

    name = "cityscapes"
    class_names = tuple(TRAIN_CLASSES)
    layout = f"leftImg8bit/<split>/<city>/*{IMAGE_SUFFIX}"
    label_mapping = _cityscapes_mapping()
    palette: np.ndarray = PALETTE  # 19 x 3 uint8, indexed by train id

    def resolve_root(self, root: Path) -> Path:
        if not root.is_dir():
            raise UserError(f"Cityscapes root not found: {root}")
        return root

    def pairs(self, split: str) -> list[tuple[Path, Path]]:
        layout = f"leftImg8bit/{split}/<city>/*{IMAGE_SUFFIX}"
        image_dir = self.root / "leftImg8bit" / split
        if not image_dir.is_dir():
            raise UserError(f"Cityscapes split folder not found: {image_dir} (expected {self.root}/{layout})")
        images = sorted(image_dir.glob(f"*/*{IMAGE_SUFFIX}"))
        if not images:
            raise UserError(f"no images in Cityscapes split folder {image_dir} (expected {self.root}/{layout})")
        labels = self.root / "gtFine" / split
        return [(image, labels / image.parent.name / f"{self.sample_name(image)}{LABEL_SUFFIX}") for image in images]

    def sample_name(self, image: Path) -> str:
        return image.name[: -len(IMAGE_SUFFIX)]

    def label_set(self) -> str:
        return "the Cityscapes label table (valid ids 0..33)"


@register
class SyntheticDataset(CityscapesDataset):
    """The embedded default dataset (``segdistill synth``): Cityscapes layout and label ids, written
    with the generator's default arguments at ``root`` on first use (``root/synth.json`` marks it complete)."""

    name = "synthetic"

    @classmethod
    def prepare(cls, root: str | Path, log: Log) -> None:
        root = Path(root)
        if (root / "synth.json").is_file():
            return
        log(f"generating the embedded synthetic street-scene dataset in {root} ...")
        counts = generate_dataset(root)
        log(f"generated {counts['train']} train and {counts['val']} val scenes")


# The held-out generated dataset: another generator seed and the dusk style (issue 18, item 2)
HELDOUT_PARAMS = {"seed": 1, "style": "dusk"}


@register
class SyntheticHeldOutDataset(SyntheticDataset):
    """A second generated dataset for checking that a ranking of methods is not a property of one dataset:
    generator seed 1 and the ``dusk`` style (another palette, light and object mix; :mod:`.synthetic.style`),
    same layout, classes and sizes as ``synthetic``; generated at ``root`` on first use. A ``root`` holding
    a generation with other parameters is refused in one line."""

    name = "synthetic_heldout"

    @classmethod
    def prepare(cls, root: str | Path, log: Log) -> None:
        root = Path(root)
        if (root / "synth.json").is_file():
            found = read_params(root)
            for key, wanted in HELDOUT_PARAMS.items():
                if found[key] != wanted:
                    raise UserError(
                        f"{root / 'synth.json'} records {key}={found[key]!r}; the held-out dataset is {key}={wanted!r} "
                        f"(point data.root at another folder, or regenerate: segdistill data synth --out {root} "
                        f"--seed {HELDOUT_PARAMS['seed']} --style {HELDOUT_PARAMS['style']})"
                    )
            return
        log(f"generating the held-out synthetic dataset (seed 1, dusk style) in {root} ...")
        counts = generate_dataset(root, **HELDOUT_PARAMS)
        log(f"generated {counts['train']} train and {counts['val']} val scenes")
