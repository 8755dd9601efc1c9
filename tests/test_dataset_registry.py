"""The dataset registry: every dataset is a registered PairedFolderDataset, a user's own dataset is
named in a config like a shipped one, and the synthetic dataset generates itself where it is absent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import segdistill.data.cityscapes as cityscapes_module
from segdistill.config import load_config
from segdistill.data.datasets import (
    DATASETS,
    CityscapesDataset,
    PairedFolderDataset,
    SyntheticDataset,
    build_dataset,
    class_names,
    prepare_dataset,
    register,
)
from segdistill.data.synthetic import generate_dataset
from segdistill.engine.builders import check_class_count
from segdistill.errors import UserError

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "synthetic" / "student.yaml"


class TwoClassFolder(PairedFolderDataset):
    """A user's dataset: ``<split>/<id>.png`` with ``<split>_labels/<id>.png`` (0, 1; 9 = void)."""

    name = "two_class_folder_test"
    class_names = ("ground", "thing")
    layout = "<split>/<id>.png and <split>_labels/<id>.png"
    label_mapping = {0: 0, 1: 1, 9: 255}

    def pairs(self, split: str) -> list[tuple[Path, Path]]:
        images = sorted(self.require_dir(self.root / split).glob("*.png"))
        return [(image, self.root / f"{split}_labels" / image.name) for image in images]


@pytest.fixture
def user_dataset(tmp_path: Path):
    register(TwoClassFolder)
    root = tmp_path / "mine"
    for split in ("train", "val"):
        (root / split).mkdir(parents=True)
        (root / f"{split}_labels").mkdir()
        Image.fromarray(np.full((6, 8, 3), 100, np.uint8)).save(root / split / "a.png")
        Image.fromarray(np.array([[0, 1, 9, 0]] * 6, np.uint8).repeat(2, axis=1)).save(
            root / f"{split}_labels" / "a.png"
        )
    yield root
    del DATASETS[TwoClassFolder.name]


def test_every_shipped_dataset_is_registered_by_its_name() -> None:
    expected = {"synthetic", "cityscapes", "ade20k", "pascal_context", "pascal_context_59", "voc_aug", "camvid"}
    assert expected <= set(DATASETS)
    for name, cls in DATASETS.items():
        assert issubclass(cls, PairedFolderDataset) and cls.name == name
    assert issubclass(CityscapesDataset, PairedFolderDataset)
    assert class_names("synthetic") == class_names("cityscapes") and len(class_names("cityscapes")) == 19


def test_user_dataset_from_a_config(user_dataset: Path) -> None:
    config = load_config(
        RECIPE, [f"data.dataset={TwoClassFolder.name}", f"data.root={user_dataset}", "model.num_classes=2"]
    )
    check_class_count(config)  # two classes, as the model says
    sample = build_dataset(config.data.dataset, config.data.root, "val")[0]
    assert sample["name"] == "a" and sample["label"].tolist()[0] == [0, 0, 1, 1, 255, 255, 0, 0]
    wrong = load_config(RECIPE, [f"data.dataset={TwoClassFolder.name}", f"data.root={user_dataset}"])
    with pytest.raises(UserError, match="model.num_classes is 19 but .* has 2 classes"):
        check_class_count(wrong)


def test_user_dataset_label_outside_its_table_names_the_file(user_dataset: Path) -> None:
    path = user_dataset / "val_labels" / "a.png"
    Image.fromarray(np.full((6, 8), 7, np.uint8)).save(path)
    with pytest.raises(UserError, match=rf"label {path} has values not in the {TwoClassFolder.name} label set "
                       r"\(valid 0\.\.1, 9\): 7"):  # fmt: skip
        build_dataset(TwoClassFolder.name, user_dataset, "val")[0]


def test_a_second_class_under_a_taken_name_is_refused() -> None:
    class Impostor(CityscapesDataset):
        name = "cityscapes"

    with pytest.raises(ValueError, match="'cityscapes' is already registered by CityscapesDataset"):
        register(Impostor)
    assert DATASETS["cityscapes"] is CityscapesDataset
    register(CityscapesDataset)  # registering the same class again is harmless


def test_unknown_dataset_is_refused_when_the_config_is_read() -> None:
    with pytest.raises(UserError) as info:
        load_config(RECIPE, ["data.dataset=cityscape"])
    message = str(info.value)
    assert "'data.dataset'" in message and "did you mean 'cityscapes'?" in message and "ade20k" in message
    with pytest.raises(UserError, match="unknown dataset 'ade20'.*did you mean 'ade20k'"):
        build_dataset("ade20", "anywhere", "val")


def test_synthetic_generates_itself_once_where_absent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []

    def small_generator(root: Path) -> dict:  # the real generator, fewer and smaller scenes
        calls.append(Path(root))
        return generate_dataset(root, train=2, val=2, height=32, width=64, workers=1)

    monkeypatch.setattr(cityscapes_module, "generate_dataset", small_generator)
    root, logged = tmp_path / "synthetic", []
    prepare_dataset("synthetic", root, logged.append)
    prepare_dataset("synthetic", root, logged.append)  # complete now: nothing to do
    assert calls == [root] and len(logged) == 2 and "generated 2 train and 2 val scenes" in logged[1]
    val = build_dataset("synthetic", root, "val")
    assert isinstance(val, SyntheticDataset) and len(val) == 2 and val[0]["image"].shape == (3, 32, 64)
    prepare_dataset("cityscapes", tmp_path / "not-there", logged.append)  # real datasets: nothing is written
    assert not (tmp_path / "not-there").exists()
