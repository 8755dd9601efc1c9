"""Writing a dataset: scene seeds and names, PNG files in the Cityscapes layout, the worker pool, synth.json."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ...errors import UserError
from .scene import render_scene
from .style import get_style

DEFAULT_HEIGHT = 128
DEFAULT_WIDTH = 256
DEFAULT_TRAIN = 800
DEFAULT_VAL = 200
# the generator parameters recorded in synth.json, at their defaults (the embedded default dataset)
DEFAULT_PARAMS = {
    "seed": 0,
    "height": DEFAULT_HEIGHT,
    "width": DEFAULT_WIDTH,
    "train": DEFAULT_TRAIN,
    "val": DEFAULT_VAL,
    "style": "default",
}
TRAIN_CITIES = ("alderford", "brackenmoor", "corrinvale")
VAL_CITIES = ("dunmere", "elsworth")

_FORMAT_VERSION = 1
_FRAME = 19  # Cityscapes' annotated frame number

# (out, split, split_index, index, city, stem, seed, height, width, style): one scene to render and write
_SceneTask = tuple[str, str, int, int, str, str, int, int, int, str]


def _scene_rng(seed: int, split_index: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, split_index, index]))


def _write_png(path: Path, array: np.ndarray) -> None:
    """Encode ``array`` as PNG and move it into place atomically."""
    ok, encoded = cv2.imencode(".png", array, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise OSError(f"could not encode {path}")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(encoded.tobytes())
    os.replace(tmp, path)


def _scene_names(split: str, n: int) -> list[tuple[str, str]]:
    """(city, file stem) of each of the ``n`` scenes of ``split``, the cities taken in turn."""
    cities = TRAIN_CITIES if split == "train" else VAL_CITIES
    out = []
    for i in range(n):
        city = cities[i % len(cities)]
        out.append((city, f"{city}_{i // len(cities):06d}_{_FRAME:06d}"))
    return out


def _write_scene(task: _SceneTask) -> None:
    out, split, split_index, index, city, stem, seed, height, width, style = task
    image, label, instance = render_scene(_scene_rng(seed, split_index, index), height, width, get_style(style))
    root = Path(out)
    _write_png(
        root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png",
        cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
    )
    gt = root / "gtFine" / split / city
    _write_png(gt / f"{stem}_gtFine_labelIds.png", label)
    _write_png(gt / f"{stem}_gtFine_instanceIds.png", instance.astype(np.uint16))


def _init_worker() -> None:
    cv2.setNumThreads(1)


def _pool_context() -> Any:
    """``forkserver`` where available, else ``spawn``. Plain ``fork`` deadlocks when the parent has
    already run threaded OpenCV or torch code (seen in the test suite): the children inherit locks
    held by threads that do not exist in them. The fork server is a fresh process that imports only
    this subpackage (the package imports torch lazily), so workers still start in well under a second."""
    methods = mp.get_all_start_methods()
    return mp.get_context("forkserver" if "forkserver" in methods else "spawn")


def generate_dataset(
    out: str | Path,
    train: int = DEFAULT_TRAIN,
    val: int = DEFAULT_VAL,
    seed: int = 0,
    height: int = DEFAULT_HEIGHT,
    width: int = DEFAULT_WIDTH,
    workers: int = 2,
    progress: Callable[[int, int], None] | None = None,
    style: str = "default",
) -> dict[str, int]:
    """Writes <out>/leftImg8bit/{train,val}/<city>/<city>_<seq:06d>_<frame:06d>_leftImg8bit.png and
    <out>/gtFine/{train,val}/<city>/<same stem>_gtFine_labelIds.png and _gtFine_instanceIds.png
    (instanceIds as 16-bit PNG like Cityscapes). Returns {"train": n, "val": n}. progress(done, total) is
    called as scenes finish. ``style``: the cities' look and object mix (:mod:`.style`: ``default``, the
    embedded dataset; ``dusk``, the held-out one)."""
    get_style(style)  # an unknown style fails before anything is written
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    marker = root / "synth.json"
    marker.unlink(missing_ok=True)  # an interrupted run must not look complete
    counts = {"train": int(train), "val": int(val)}
    tasks: list[_SceneTask] = []
    expected: set[Path] = set()
    for split_index, split in enumerate(("train", "val")):
        cities = TRAIN_CITIES if split == "train" else VAL_CITIES
        for city in cities:
            for top in ("leftImg8bit", "gtFine"):
                (root / top / split / city).mkdir(parents=True, exist_ok=True)
        for index, (city, stem) in enumerate(_scene_names(split, counts[split])):
            tasks.append((str(root), split, split_index, index, city, stem, int(seed), int(height), int(width), style))
            expected.add(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
            for suffix in ("labelIds", "instanceIds"):
                expected.add(root / "gtFine" / split / city / f"{stem}_gtFine_{suffix}.png")

    total = len(tasks)
    workers = max(1, min(int(workers), total))
    done = 0
    if workers == 1:
        for task in tasks:
            _write_scene(task)
            done += 1
            if progress is not None:
                progress(done, total)
    else:
        chunk = max(1, min(8, total // (workers * 8)))
        with _pool_context().Pool(workers, initializer=_init_worker) as pool:
            for _ in pool.imap_unordered(_write_scene, tasks, chunksize=chunk):
                done += 1
                if progress is not None:
                    progress(done, total)

    # drop scenes left over from an earlier, larger generation into the same folders
    for split in ("train", "val"):
        for city in TRAIN_CITIES if split == "train" else VAL_CITIES:
            for top in ("leftImg8bit", "gtFine"):
                for path in (root / top / split / city).glob("*.png"):
                    if path not in expected:
                        path.unlink()

    meta = {
        "generator": "segdistill.data.synthetic",
        "version": _FORMAT_VERSION,
        "layout": "cityscapes",
        "seed": int(seed),
        "height": int(height),
        "width": int(width),
        "train": counts["train"],
        "val": counts["val"],
        "train_cities": list(TRAIN_CITIES),
        "val_cities": list(VAL_CITIES),
        "style": style,
    }
    tmp = marker.with_name(f".{marker.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, marker)
    return counts


def read_params(root: str | Path) -> dict[str, Any]:
    """The generator parameters (the keys of ``DEFAULT_PARAMS``) recorded in ``<root>/synth.json``."""
    path = Path(root) / "synth.json"
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read the generator record {path}: {exc}") from None
    params = {key: meta.get(key) for key in DEFAULT_PARAMS}
    params["style"] = params["style"] or "default"  # written before styles existed: the default one
    return params
