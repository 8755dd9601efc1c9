"""CityscapesDataset on tiny on-disk trees: label mapping, ordering, tensors, and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segdistill.data.datasets import CityscapesDataset, build_dataset, load_image, load_label
from segdistill.data.transforms import IMAGENET_MEAN, IMAGENET_STD, train_transform
from segdistill.errors import UserError

H, W = 8, 12
# labelId -> expected trainId: road, sidewalk, car, bicycle, and ignored ids unlabeled / parking /
# ego vehicle / rail track.
ID_TO_TRAIN = {7: 0, 8: 1, 26: 13, 33: 18, 0: 255, 9: 255, 1: 255, 10: 255}
STEMS = ["bremen_000000_000019", "aachen_000001_000019", "aachen_000000_000019"]


def label_ids(seed: int) -> np.ndarray:
    """An HxW uint8 labelIds map that uses every id of ID_TO_TRAIN."""
    ids = np.array(sorted(ID_TO_TRAIN), dtype=np.uint8)
    flat = np.resize(ids, H * W)
    return np.random.default_rng(seed).permutation(flat).reshape(H, W)


def image_path(root: Path, split: str, stem: str) -> Path:
    return root / "leftImg8bit" / split / stem.split("_")[0] / f"{stem}_leftImg8bit.png"


def label_path(root: Path, split: str, stem: str) -> Path:
    return root / "gtFine" / split / stem.split("_")[0] / f"{stem}_gtFine_labelIds.png"


def write_sample(root: Path, split: str, stem: str, seed: int) -> None:
    img, lab = image_path(root, split, stem), label_path(root, split, stem)
    img.parent.mkdir(parents=True, exist_ok=True)
    lab.parent.mkdir(parents=True, exist_ok=True)
    colour = np.random.default_rng(seed).integers(0, 256, size=(H, W, 3), dtype=np.uint8)
    Image.fromarray(colour).save(img)
    Image.fromarray(label_ids(seed)).save(lab)


@pytest.fixture
def cs_root(tmp_path: Path) -> Path:
    root = tmp_path / "cityscapes"
    for seed, stem in enumerate(STEMS):
        write_sample(root, "val", stem, seed)
    return root


def raises_user_error(match_path: Path, fn, *args, **kwargs) -> str:
    """Run fn, expect UserError with a one-line message naming match_path; return the message."""
    with pytest.raises(UserError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    assert str(match_path) in message, message
    return message


def test_samples_sorted_mapped_and_typed(cs_root: Path) -> None:
    ds = CityscapesDataset(cs_root, "val")
    assert len(ds) == 3
    assert [p.name for p in ds.images] == [f"{s}_leftImg8bit.png" for s in sorted(STEMS)]
    assert [p.name for p in ds.labels] == [f"{s}_gtFine_labelIds.png" for s in sorted(STEMS)]
    assert ds.num_classes == 19 and ds.ignore_index == 255
    assert len(ds.class_names) == 19 and ds.class_names[0] == "road"
    assert ds.palette.shape == (19, 3)
    lut = np.full(256, -1, dtype=np.int64)
    for label_id, train_id in ID_TO_TRAIN.items():
        lut[label_id] = train_id
    for index, stem in enumerate(sorted(STEMS)):
        sample = ds[index]
        assert sample["name"] == stem
        assert sample["image"].dtype == torch.float32 and sample["image"].shape == (3, H, W)
        assert sample["label"].dtype == torch.int64 and sample["label"].shape == (H, W)
        expected = lut[load_label(label_path(cs_root, "val", stem))]
        np.testing.assert_array_equal(sample["label"].numpy(), expected)
        assert set(np.unique(expected)) == {0, 1, 13, 18, 255}


def test_image_is_imagenet_normalised(cs_root: Path) -> None:
    ds = CityscapesDataset(cs_root, "val")
    raw = load_image(ds.images[0]).astype(np.float32) / 255.0
    expected = (raw - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    np.testing.assert_allclose(ds[0]["image"].permute(1, 2, 0).numpy(), expected, atol=1e-5)


def test_transform_runs_on_uint8_train_ids_before_normalisation(cs_root: Path) -> None:
    seen: dict[str, np.ndarray] = {}

    def spy(image: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
        seen["image"], seen["mask"] = image, mask
        return {"image": image[:, ::-1], "mask": mask[:, ::-1]}

    ds = CityscapesDataset(cs_root, "val", transform=spy)
    sample = ds[0]
    assert seen["image"].dtype == np.uint8 and seen["image"].shape == (H, W, 3)
    assert seen["mask"].dtype == np.uint8 and seen["mask"].shape == (H, W)
    assert set(np.unique(seen["mask"])) <= {0, 1, 13, 18, 255}
    np.testing.assert_array_equal(sample["label"].numpy(), seen["mask"][:, ::-1])


def test_with_train_transform(cs_root: Path) -> None:
    ds = build_dataset("cityscapes", cs_root, "val", transform=train_transform((16, 20), seed=0))
    for index in range(len(ds)):
        sample = ds[index]
        assert sample["image"].shape == (3, 16, 20) and sample["label"].shape == (16, 20)
        assert set(sample["label"].unique().tolist()) <= {0, 1, 13, 18, 255}


def test_build_dataset_unknown_name(cs_root: Path) -> None:
    with pytest.raises(UserError, match="cityscapes") as info:
        build_dataset("citiscapes", cs_root, "val")
    assert "citiscapes" in str(info.value) and "\n" not in str(info.value)


# ---------------------------------------------------------------- bad input


def test_missing_root(tmp_path: Path) -> None:
    raises_user_error(tmp_path / "nope", CityscapesDataset, tmp_path / "nope", "val")


def test_missing_split_names_expected_layout(cs_root: Path) -> None:
    message = raises_user_error(cs_root / "leftImg8bit" / "train", CityscapesDataset, cs_root, "train")
    assert "leftImg8bit/train/<city>/*_leftImg8bit.png" in message


def test_empty_split(cs_root: Path) -> None:
    (cs_root / "leftImg8bit" / "test" / "berlin").mkdir(parents=True)
    raises_user_error(cs_root / "leftImg8bit" / "test", CityscapesDataset, cs_root, "test")


def test_image_without_label(cs_root: Path) -> None:
    label_path(cs_root, "val", STEMS[1]).unlink()
    message = raises_user_error(image_path(cs_root, "val", STEMS[1]), CityscapesDataset, cs_root, "val")
    assert str(label_path(cs_root, "val", STEMS[1])) in message


@pytest.mark.parametrize("kind", ["garbage", "truncated", "empty"])
@pytest.mark.parametrize("which", ["image", "label"])
def test_corrupt_file_named_at_load(cs_root: Path, kind: str, which: str) -> None:
    stem = sorted(STEMS)[0]
    path = image_path(cs_root, "val", stem) if which == "image" else label_path(cs_root, "val", stem)
    data = path.read_bytes()
    path.write_bytes({"garbage": b"not a png at all", "truncated": data[: len(data) // 2], "empty": b""}[kind])
    ds = CityscapesDataset(cs_root, "val")  # init does not decode files
    raises_user_error(path, ds.__getitem__, 0)
    loader = load_image if which == "image" else load_label
    raises_user_error(path, loader, path)


def test_rgb_label_rejected(cs_root: Path) -> None:
    path = label_path(cs_root, "val", sorted(STEMS)[0])
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(path)
    raises_user_error(path, CityscapesDataset(cs_root, "val").__getitem__, 0)


def test_size_mismatch(cs_root: Path) -> None:
    stem = sorted(STEMS)[0]
    Image.fromarray(np.zeros((H + 2, W, 3), np.uint8)).save(image_path(cs_root, "val", stem))
    message = raises_user_error(image_path(cs_root, "val", stem), CityscapesDataset(cs_root, "val").__getitem__, 0)
    assert f"{W}x{H + 2}" in message and f"{W}x{H}" in message


def test_label_values_outside_table(cs_root: Path) -> None:
    stem = sorted(STEMS)[0]
    bad = label_ids(0)
    bad[0, 0], bad[1, 1] = 40, 200
    Image.fromarray(bad).save(label_path(cs_root, "val", stem))
    ds = CityscapesDataset(cs_root, "val")  # lazy: no scan at init
    message = raises_user_error(label_path(cs_root, "val", stem), ds.__getitem__, 0)
    assert "40" in message and "200" in message
    assert ds[1]["label"].shape == (H, W)  # other samples are fine

    unchecked = CityscapesDataset(cs_root, "val", check_labels=False)
    label = unchecked[0]["label"]
    assert label[0, 0] == 255 and label[1, 1] == 255
