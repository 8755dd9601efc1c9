"""The synthetic street-scene generator: Cityscapes layout, label ids, instance ids, determinism."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from segdistill.data import synthetic
from segdistill.data.labels import LABELS, NAME_TO_ID, VALID_LABEL_IDS

H, W = 64, 128
TRAIN, VAL, SEED = 4, 2, 3
IMAGE_RE = re.compile(r"^([a-z]+)_(\d{6})_(\d{6})_leftImg8bit\.png$")
REQUIRED = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "car",
)
THING_IDS = {label.id for label in LABELS if label.has_instances}


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _read(path: Path) -> np.ndarray:
    array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert array is not None, path
    return array


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int], list[tuple[int, int]]]:
    root = tmp_path_factory.mktemp("synth") / "a"
    calls: list[tuple[int, int]] = []
    counts = synthetic.generate_dataset(
        root,
        train=TRAIN,
        val=VAL,
        seed=SEED,
        height=H,
        width=W,
        workers=1,
        progress=lambda done, total: calls.append((done, total)),
    )
    return root, counts, calls


@pytest.fixture(scope="module")
def scenes() -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    return [synthetic.render_scene(np.random.default_rng(np.random.SeedSequence([7, i])), 128, 256) for i in range(20)]


def test_counts_progress_and_marker(generated) -> None:
    root, counts, calls = generated
    assert counts == {"train": TRAIN, "val": VAL}
    assert calls == [(k, TRAIN + VAL) for k in range(1, TRAIN + VAL + 1)]
    meta = json.loads((root / "synth.json").read_text())
    assert (meta["seed"], meta["height"], meta["width"], meta["train"], meta["val"]) == (
        SEED,
        H,
        W,
        TRAIN,
        VAL,
    )


def test_cityscapes_layout_and_naming(generated) -> None:
    root, counts, _ = generated
    for split, cities in (("train", synthetic.TRAIN_CITIES), ("val", synthetic.VAL_CITIES)):
        images = sorted((root / "leftImg8bit" / split).glob("*/*"))
        assert len(images) == counts[split]
        for image_path in images:
            match = IMAGE_RE.match(image_path.name)
            assert match, image_path.name
            city = match.group(1)
            assert city in cities and image_path.parent.name == city
            stem = image_path.name[: -len("_leftImg8bit.png")]
            gt = root / "gtFine" / split / city
            image = _read(image_path)
            label = _read(gt / f"{stem}_gtFine_labelIds.png")
            inst = _read(gt / f"{stem}_gtFine_instanceIds.png")
            assert image.shape == (H, W, 3) and image.dtype == np.uint8
            assert label.shape == (H, W) and label.dtype == np.uint8
            assert inst.shape == (H, W) and inst.dtype == np.uint16
            assert set(np.unique(label).tolist()) <= VALID_LABEL_IDS
            _check_instances(label, inst.astype(np.int32))
        assert len(list((root / "gtFine" / split).glob("*/*"))) == 2 * counts[split]
    leftovers = [p for p in root.rglob("*") if p.is_file() and p.suffix != ".png" and p.name != "synth.json"]
    assert not leftovers


def test_deterministic_for_any_worker_count(generated, tmp_path: Path) -> None:
    root, _, _ = generated
    synthetic.generate_dataset(tmp_path / "b", train=TRAIN, val=VAL, seed=SEED, height=H, width=W, workers=2)
    assert _tree(tmp_path / "b") == _tree(root)
    synthetic.generate_dataset(tmp_path / "c", train=TRAIN, val=VAL, seed=SEED + 1, height=H, width=W, workers=1)
    other = _tree(tmp_path / "c")
    images = [k for k in other if k.endswith("_leftImg8bit.png")]
    assert images and all(other[k] != _tree(root)[k] for k in images)


def test_regeneration_drops_stale_scenes(tmp_path: Path) -> None:
    synthetic.generate_dataset(tmp_path, train=4, val=1, seed=0, height=32, width=64, workers=1)
    synthetic.generate_dataset(tmp_path, train=2, val=1, seed=0, height=32, width=64, workers=1)
    assert len(list((tmp_path / "leftImg8bit" / "train").glob("*/*.png"))) == 2
    assert len(list((tmp_path / "gtFine" / "train").glob("*/*.png"))) == 4
    assert json.loads((tmp_path / "synth.json").read_text())["train"] == 2


def test_splits_share_no_scene(generated) -> None:
    root, _, _ = generated

    def digests(split: str) -> set[str]:
        return {hashlib.sha256(p.read_bytes()).hexdigest() for p in (root / "leftImg8bit" / split).glob("*/*")}

    train, val = digests("train"), digests("val")
    assert len(train) == TRAIN and len(val) == VAL and not train & val


def test_render_scene_is_deterministic() -> None:
    a = synthetic.render_scene(np.random.default_rng(np.random.SeedSequence([1, 2, 3])), 48, 96)
    b = synthetic.render_scene(np.random.default_rng(np.random.SeedSequence([1, 2, 3])), 48, 96)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_labels_valid_and_required_classes_present(scenes) -> None:
    seen: set[int] = set()
    for image, label, inst in scenes:
        assert image.shape == (128, 256, 3) and image.dtype == np.uint8
        assert label.shape == (128, 256) and label.dtype == np.uint8
        assert inst.shape == (128, 256) and inst.dtype == np.int32
        ids = set(np.unique(label).tolist())
        assert ids <= VALID_LABEL_IDS
        seen |= ids
    missing = [name for name in REQUIRED if NAME_TO_ID[name] not in seen]
    assert not missing, missing
    # the image is not trivially the label: neighbouring classes are not separable by a colour lookup
    road = np.concatenate([img[lab == NAME_TO_ID["road"]] for img, lab, _ in scenes])
    assert road.std(axis=0).min() > 8


def _check_instances(label: np.ndarray, inst: np.ndarray) -> None:
    things = inst >= 1000
    np.testing.assert_array_equal(inst[things] // 1000, label[things])
    np.testing.assert_array_equal(inst[~things], label[~things])
    assert set(np.unique(label[things]).tolist()) <= THING_IDS
    for name in ("person", "car"):
        assert (inst[label == NAME_TO_ID[name]] >= 1000).all()
    for cls in np.unique(inst[things] // 1000):
        ks = np.unique(inst[things & (label == cls)] % 1000)
        np.testing.assert_array_equal(ks, np.arange(len(ks)))


def test_instance_ids_follow_cityscapes_convention(scenes) -> None:
    n_instances = 0
    for _, label, inst in scenes:
        _check_instances(label, inst)
        n_instances += len(np.unique(inst[inst >= 1000]))
    assert n_instances >= 40


def test_generator_record_is_read_back_and_a_corrupt_one_is_named(tmp_path):
    from segdistill.errors import UserError

    synthetic.generate_dataset(tmp_path, train=2, val=1, seed=3, height=64, width=128, workers=1)
    assert synthetic.read_params(tmp_path) == {
        "seed": 3,
        "height": 64,
        "width": 128,
        "train": 2,
        "val": 1,
        "style": "default",
    }
    (tmp_path / "synth.json").write_text("{not json")
    with pytest.raises(UserError, match=re.escape(str(tmp_path / "synth.json"))):
        synthetic.read_params(tmp_path)


def _style_scenes(style: str, n: int = 16) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    rng = [np.random.default_rng(np.random.SeedSequence([11, i])) for i in range(n)]
    return [synthetic.render_scene(r, 96, 192, synthetic.get_style(style)) for r in rng]


def test_the_dusk_style_changes_palette_light_and_object_mix() -> None:
    """The held-out style is deterministic, keeps the layout's classes, and differs where it says it does:
    a redder sky and vegetation, darker images, and more people and large vehicles per scene."""
    default, dusk = _style_scenes("default"), _style_scenes("dusk")
    again = _style_scenes("dusk", 2)
    for x, y in zip(dusk[:2], again, strict=True):
        for a, b in zip(x, y, strict=True):
            np.testing.assert_array_equal(a, b)

    def mean_colour(scenes, name: str) -> np.ndarray:
        pixels = np.concatenate([image[label == NAME_TO_ID[name]] for image, label, _ in scenes])
        return pixels.astype(np.float64).mean(axis=0)

    for name in ("sky", "vegetation"):
        red_over_blue = [c[0] / c[2] for c in (mean_colour(default, name), mean_colour(dusk, name))]
        assert red_over_blue[1] > 1.3 * red_over_blue[0], name
    brightness = [np.mean([image.mean() for image, _, _ in s]) for s in (default, dusk)]
    assert brightness[1] < 0.85 * brightness[0]

    def instances(scenes, names: tuple[str, ...]) -> int:
        ids = {NAME_TO_ID[n] for n in names}
        return sum(len({v for v in np.unique(inst) if v >= 1000 and v // 1000 in ids}) for _, _, inst in scenes)

    assert instances(dusk, ("person",)) > instances(default, ("person",))
    assert instances(dusk, ("bus", "truck")) > instances(default, ("bus", "truck"))
    for _, label, _ in dusk:
        assert set(np.unique(label).tolist()) <= VALID_LABEL_IDS


def test_style_is_recorded_checked_and_refused_when_unknown(tmp_path, capsys) -> None:
    from segdistill.cli import main
    from segdistill.data.cityscapes import HELDOUT_PARAMS, SyntheticHeldOutDataset
    from segdistill.errors import UserError

    out = tmp_path / "dusk"
    assert main(["data", "synth", "--out", str(out), "--train", "2", "--val", "1", "--height", "32", "--width", "64",
                 "--workers", "1", "--seed", "1", "--style", "dusk"]) == 0  # fmt: skip
    assert synthetic.read_params(out)["style"] == "dusk" and synthetic.read_params(out)["seed"] == 1
    SyntheticHeldOutDataset.prepare(out, print)  # the held-out parameters: accepted as it is
    record = json.loads((out / "synth.json").read_text())
    del record["style"]  # a record written before styles existed reads as the default style
    (out / "synth.json").write_text(json.dumps(record))
    assert synthetic.read_params(out)["style"] == "default"
    with pytest.raises(UserError, match=r"records style='default'; the held-out dataset is style='dusk'"):
        SyntheticHeldOutDataset.prepare(out, print)
    with pytest.raises(UserError, match=r"unknown synthetic style 'noon'; known: default, dusk"):
        synthetic.generate_dataset(tmp_path / "x", train=1, val=1, style="noon")
    assert not (tmp_path / "x").exists()
    assert HELDOUT_PARAMS == {"seed": 1, "style": "dusk"}
