"""``data.cache``: decoded samples kept in memory change no sample and no training run."""

from __future__ import annotations

import shutil

import torch

from segdistill.cli import main
from segdistill.data.datasets import build_dataset
from segdistill.data.sampling import SeededSamples
from segdistill.data.transforms import train_transform


def _samples(dataset, seeds):
    wrapped = SeededSamples(dataset)
    return [wrapped[(index % len(dataset), seed)] for index, seed in enumerate(seeds)]


def test_cached_reads_equal_fresh_reads_and_stay_unmodified(tiny_data):
    transform = train_transform((48, 48), seed=0)
    fresh = build_dataset("synthetic", tiny_data, "train", transform=train_transform((48, 48), seed=0))
    cached = build_dataset("synthetic", tiny_data, "train", transform=transform, cache=True)
    seeds = list(range(100, 124))  # three passes over the 8 scenes, each with another augmentation
    for a, b in zip(_samples(fresh, seeds), _samples(cached, seeds)):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"]) and a["name"] == b["name"]
    for index in range(len(cached)):  # the kept arrays are still the files' contents after augmentation
        image, mask = cached.decoded(index)
        again_image, again_mask = fresh.decoded(index)
        assert (image == again_image).all() and (mask == again_mask).all()


def test_cache_reads_each_file_once(tiny_data, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(tiny_data, root)
    dataset = build_dataset("synthetic", root, "val", cache=True)
    first = [dataset[i] for i in range(len(dataset))]
    shutil.rmtree(root / "leftImg8bit")  # a second read that opened a file would fail now
    shutil.rmtree(root / "gtFine")
    for a, b in zip(first, (dataset[i] for i in range(len(dataset)))):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])


def test_a_run_with_the_cache_equals_one_without(tiny_overrides, tmp_path):
    weights = {}
    for cache in (False, True):
        out = tmp_path / f"cache_{cache}"
        overrides = [o for o in tiny_overrides if not o.startswith("out_dir")]
        code = main(
            [
                "train",
                "configs/synthetic/student.yaml",
                *overrides,
                f"out_dir={out}",
                f"data.cache={str(cache).lower()}",
            ]
        )
        assert code == 0
        state = torch.load(out / "synthetic_student" / "checkpoints" / "last.pt", weights_only=True)
        weights[cache] = state["model"]
    assert weights[False].keys() == weights[True].keys()
    assert all(torch.equal(weights[False][k], weights[True][k]) for k in weights[False])


def test_the_cache_survives_epochs_and_evaluations_with_workers(tiny_data, tmp_path):
    """With data.workers > 0 the workers persist (a new worker would start with an empty cache)."""
    from segdistill.config import load_config
    from segdistill.engine.builders import build_datasets, build_loaders
    from segdistill.quickstart import recipe_path

    root = tmp_path / "copy"
    shutil.copytree(tiny_data, root)
    overrides = [f"data.root={root}", "data.workers=1", "data.cache=true", "data.batch_size=4"]
    overrides.append("data.crop_size=[32,32]")
    config = load_config(recipe_path("synthetic/student.yaml"), overrides)
    train_set, val_set = build_datasets(config)
    train, val = build_loaders(config, train_set, val_set)
    first = [batch["label"] for batch in val]
    for _ in train:  # one epoch: every training file decoded once, in the worker
        pass
    shutil.rmtree(root / "leftImg8bit")
    shutil.rmtree(root / "gtFine")
    for _ in train:  # a second epoch and a second evaluation read nothing from disk
        pass
    assert all(torch.equal(a, b["label"]) for a, b in zip(first, val))


def test_an_evaluation_does_not_draw_from_the_global_rng(tiny_data, assert_leaves_global_rng):
    """Iterating an evaluation loader leaves torch's global RNG where it was (it has its own generator), so
    evaluating during training does not change the dropout masks after it."""
    from segdistill.config import load_config
    from segdistill.engine.builders import build_datasets, build_loaders
    from segdistill.engine.run import evaluation_loader
    from segdistill.quickstart import recipe_path

    config = load_config(recipe_path("synthetic/student.yaml"), [f"data.root={tiny_data}"])
    _, val = build_loaders(config, *build_datasets(config))
    assert_leaves_global_rng(val)
    assert_leaves_global_rng(evaluation_loader(config))
