"""Every shipped recipe resolves to exactly the config it resolved to before the architecture
refactor (issue 13). ``tests/data/resolved_recipes.json`` was written by resolving each recipe with
the code of commit e4dd284 (the main before the refactor):
``python tests/data/snapshot_configs.py src/segdistill/configs tests/data/resolved_recipes.json``, where the
script loads each YAML with ``load_config`` (the detection schema under ``detection/``) and dumps
``config_to_dict``. A change to a recipe or a schema default that alters what a recipe trains
fails here; an intended change must regenerate the file and say so in its commit.

One intended schema change is applied to the stored copies: ``teacher:`` is now a ``ModelConfig``
like ``model:``, so a resolved teacher also lists ``pretrained`` and ``dropout`` at their defaults
(false, 0.1: what ``build_model`` used for a teacher before). Fragments under ``_base/`` are not
recipes; they are part of the recipes that name them as ``base:``.

A second intended schema change (issue 14): model sections name who builds the model, so a resolved
``model:`` and ``teacher:`` also list ``source``, ``arch`` and ``kwargs`` at their defaults
(``segdistill``, null, {}: the only models the recipes could build before), and ``train:`` lists
``optimizer: sgd`` (the only optimizer before). Recipes added after the snapshot are stored as they
first resolved in ``tests/data/resolved_recipes_added.json``.

A third (issue 15, model-zoo checkpoints): model sections name the layout details in which the zoos
differ and the normalisation the weights expect, so every stored model and teacher section also lists
``align_corners: false``, ``contract_dilation: true``, ``aspp_projection: true`` and ImageNet RGB
``input_mean``/``input_std``/``input_channels``: what every segdistill model did before; and the
evaluation names two more protocol details, ``eval.keep_ratio: null`` (no mmsegmentation resize) and
``eval.window_merge: logits`` (the only merge before).

A fourth (issue 18, experiment tracking): ``train.tensorboard: true`` in every recipe (it writes TensorBoard
events beside metrics.jsonl when the package is installed; it changes nothing that is trained).

A fifth (issue 17, speed): ``data.cache`` keeps decoded images and labels in memory; false everywhere except
the generated datasets' recipes (``synthetic/`` and ``synthetic_heldout/``, detection aside), whose
``student.yaml`` and ``teacher.yaml`` set it. It changes no sample (a test compares cached and fresh reads).

One recipe changed on purpose (issue 18, detection): the detection teacher trains 3600 iterations instead of
1200 and evaluates every 1200 steps, because at 1200 it beat the student baseline by only 0.4 box AP
(``RECIPE_CHANGES``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from segdistill.config import config_to_dict, load_config
from segdistill.detection.config import DetectionConfig

RECIPES = Path(__file__).resolve().parents[1] / "src" / "segdistill" / "configs"
DATA = Path(__file__).parent / "data"
SNAPSHOT = json.loads((DATA / "resolved_recipes.json").read_text())
# Recipes added after the snapshot, stored as they first resolved (``snapshot_configs.py --only-new``).
ADDED = json.loads((DATA / "resolved_recipes_added.json").read_text())
STORED = {**SNAPSHOT, **ADDED}
TEACHER_DEFAULTS_ADDED = {"pretrained": False, "dropout": 0.1}
SOURCE_DEFAULTS_ADDED = {"source": "segdistill", "arch": None, "kwargs": {}}
TRAIN_DEFAULTS_ADDED = {"optimizer": "sgd"}  # issue 14: AdamW for the transformer recipes; SGD before
EVAL_DEFAULTS_ADDED = {"keep_ratio": None, "window_merge": "logits"}  # issue 15
TRACKING_DEFAULTS_ADDED = {"tensorboard": True}  # issue 18: TensorBoard logging when the package is installed
# Intended changes to a recipe's resolved values, per recipe and section (applied over the stored copy).
RECIPE_CHANGES = {"synthetic/detection/teacher.yaml": {"train": {"iters": 3600, "eval_interval": 1200}}}
ZOO_DEFAULTS_ADDED = {  # issue 15
    "align_corners": False,
    "contract_dilation": True,
    "aspp_projection": True,
    "input_mean": [123.675, 116.28, 103.53],
    "input_std": [58.395, 57.12, 57.375],
    "input_channels": "rgb",
}


def _recipes() -> list[str]:
    return sorted(p.relative_to(RECIPES).as_posix() for p in RECIPES.rglob("*.yaml") if "_base" not in p.parts)


def _expected(recipe: str) -> dict:
    expected = json.loads(json.dumps(STORED[recipe]))
    for section, values in RECIPE_CHANGES.get(recipe, {}).items():
        expected[section] = {**expected[section], **values}
    expected["train"] = {**TRACKING_DEFAULTS_ADDED, **expected["train"]}
    if "/detection/" not in recipe:
        generated = recipe.startswith(("synthetic/", "synthetic_heldout/"))
        expected["data"] = {**expected["data"], "cache": generated}
        expected["eval"] = {**EVAL_DEFAULTS_ADDED, **expected["eval"]}
        for key in ("model", "teacher"):
            if expected.get(key) is not None:
                expected[key] = {**ZOO_DEFAULTS_ADDED, **expected[key]}
    if recipe in ADDED:
        return expected
    expected["train"] = {**TRAIN_DEFAULTS_ADDED, **expected["train"]}
    if "/detection/" in recipe:
        return expected
    if expected.get("teacher") is not None:
        expected["teacher"] = {**TEACHER_DEFAULTS_ADDED, **SOURCE_DEFAULTS_ADDED, **expected["teacher"]}
    expected["model"] = {**SOURCE_DEFAULTS_ADDED, **expected["model"]}
    return expected


def test_every_shipped_recipe_is_stored() -> None:
    assert _recipes() == sorted(STORED)


@pytest.mark.parametrize("recipe", sorted(STORED))
def test_recipe_resolves_as_before(recipe: str) -> None:
    schema = DetectionConfig if "/detection/" in recipe else None
    path = RECIPES / recipe
    config = load_config(path, [], schema=schema) if schema else load_config(path, [])
    # through JSON, as stored: tuples become lists, keys strings
    resolved = json.loads(json.dumps(config_to_dict(config), sort_keys=True))
    assert resolved == _expected(recipe)
