"""ADE20K, PASCAL-Context (60/59), VOC 2012 aug and CamVid: tiny fixtures in each exact layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segdistill.cli import main
from segdistill.data.datasets import build_dataset, class_names
from segdistill.errors import UserError

H, W = 24, 32


def write_pair(image: Path, label: Path, values: list[int], palette: bool = False) -> None:
    """An RGB image and a label whose rows cycle through ``values``."""
    rng = np.random.default_rng(len(str(image)))
    image.parent.mkdir(parents=True, exist_ok=True)
    label.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(image)
    mask = np.array([values[r % len(values)] for r in range(H)], dtype=np.uint8)[:, None].repeat(W, axis=1)
    out = Image.fromarray(mask, mode="L")
    if palette:  # VOC's SegmentationClass PNGs are palette images: the indices are the labels
        out = out.convert("P")
        out.putpalette([c for i in range(256) for c in (i, 255 - i, (7 * i) % 256)])
    out.save(label)


def make_ade(root: Path, values=(0, 1, 150)) -> Path:
    base = root / "ADEChallengeData2016"
    for split, tag in (("training", "train"), ("validation", "val")):
        for i in range(2):
            name = f"ADE_{tag}_{i + 1:08d}"
            write_pair(
                base / "images" / split / f"{name}.jpg", base / "annotations" / split / f"{name}.png", list(values)
            )
    return root


def make_context(root: Path, values=(0, 1, 59)) -> Path:
    for split in ("train", "val"):
        ids = [f"2008_00{split == 'val'}00{i}" for i in range(2)]
        (root / "ImageSets" / "SegmentationContext").mkdir(parents=True, exist_ok=True)
        (root / "ImageSets" / "SegmentationContext" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        for i in ids:
            write_pair(root / "JPEGImages" / f"{i}.jpg", root / "SegmentationClassContext" / f"{i}.png", list(values))
    return root


def make_voc(root: Path) -> Path:
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "aug.txt").write_text("2007_000032\n2007_000039\n")
    (lists / "val.txt").write_text("2007_000033\n")
    for i in ("2007_000032", "2007_000039"):
        write_pair(root / "JPEGImages" / f"{i}.jpg", root / "SegmentationClassAug" / f"{i}.png", [0, 15, 255])
    write_pair(
        root / "JPEGImages" / "2007_000033.jpg", root / "SegmentationClass" / "2007_000033.png", [0, 20, 255], True
    )
    return root


def make_camvid(root: Path) -> Path:
    for split in ("train", "val", "test"):
        for i in range(2):
            write_pair(
                root / split / f"0001TP_{i:06d}.png", root / f"{split}annot" / f"0001TP_{i:06d}.png", [0, 10, 11]
            )
    return root


def rows(sample) -> list[int]:
    """The train id of each distinct label row, in order."""
    label = sample["label"].numpy()
    return [int(v) for v in dict.fromkeys(label[:, 0].tolist())]


def test_ade20k_reduces_the_zero_label(tmp_path):
    root = make_ade(tmp_path)
    for given in (root, root / "ADEChallengeData2016"):  # the folder or its parent
        train = build_dataset("ade20k", given, "train")
        assert len(train) == 2 and train.num_classes == 150 == len(class_names("ade20k"))
        sample = train[0]
        assert sample["image"].shape == (3, H, W) and sample["name"] == "ADE_train_00000001"
        assert rows(sample) == [255, 0, 149]  # 0 = other -> ignore, k -> k - 1
    assert len(build_dataset("ade20k", root, "validation")) == 2


def test_pascal_context_60_and_59(tmp_path):
    root = make_context(tmp_path)
    assert rows(build_dataset("pascal_context", root, "train")[0]) == [0, 1, 59]
    assert rows(build_dataset("pascal_context_59", root, "val")[0]) == [255, 0, 58]
    assert class_names("pascal_context")[0] == "background" and len(class_names("pascal_context_59")) == 59


def test_voc_aug_and_val_with_palette_labels(tmp_path):
    root = make_voc(tmp_path)
    train = build_dataset("voc_aug", root, "train_aug")
    assert len(train) == 2 and rows(train[1]) == [0, 15, 255]
    assert rows(build_dataset("voc_aug", root, "val")[0]) == [0, 20, 255]


def test_camvid_void_is_ignored(tmp_path):
    root = make_camvid(tmp_path)
    for split in ("train", "val", "test"):
        assert rows(build_dataset("camvid", root, split)[1]) == [0, 10, 255]


@pytest.mark.parametrize(
    "name, make, damage, message",
    [
        ("ade20k", make_ade, "rm:ADEChallengeData2016/annotations/training", "ade20k folder not found: "),
        ("ade20k", make_ade, "split:test", "ade20k has no split 'test'"),
        ("pascal_context", make_context, "rm:ImageSets", "pascal_context split list not found"),
        ("voc_aug", make_voc, "rm:SegmentationClassAug/2007_000039.png", "no label for image"),
        ("camvid", make_camvid, "rm:trainannot", r"camvid folder not found: \S*trainannot \(expected .*annot/\*\.png"),
        ("camvid", make_camvid, "rm:", "camvid root not found"),
    ],
)
def test_layout_errors_name_the_path_and_the_expected_layout(tmp_path, name, make, damage, message):
    import shutil

    root = make(tmp_path / "d")
    split = "train_aug" if name == "voc_aug" else "train"
    kind, _, what = damage.partition(":")
    if kind == "split":
        split = what
    else:
        target = root / what
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(UserError, match=message) as info:
        build_dataset(name, root, split)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "name, make, bad",
    [("ade20k", make_ade, 151), ("pascal_context", make_context, 60), ("camvid", make_camvid, 12)],
)
def test_label_values_outside_the_set_are_named(tmp_path, name, make, bad):
    root = make(tmp_path, values=(0, 1, bad)) if name != "camvid" else make(tmp_path)
    dataset = build_dataset(name, root, "train")
    if name == "camvid":
        write_pair(dataset.images[0], dataset.labels[0], [0, bad])
    with pytest.raises(UserError, match=rf"label {dataset.labels[0]} has values not in the {name} label set .*: {bad}"):
        dataset[0]


def test_train_on_ade20k_and_class_count_check(tiny_overrides, tmp_path, capsys):
    root = make_ade(tmp_path / "ade")
    base = [o for o in tiny_overrides if not o.startswith(("data.root", "data.crop_size", "data.batch_size"))]
    args = ["train", "configs/synthetic/student.yaml", *base, "data.dataset=ade20k", f"data.root={root}"]
    args += ["data.crop_size=[24,24]", "data.batch_size=2", "eval.batch_size=2", "name=ade"]
    code = main([*args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "model.num_classes is 19 but data.dataset=ade20k has 150 classes" in err[-1]
    assert main([*args, "model.num_classes=150"]) == 0
    import json

    summary = json.loads((tmp_path / "runs/ade/summary.json").read_text())
    assert len(summary["val"]["iou"]) == 150
