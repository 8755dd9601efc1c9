"""Turn a :class:`~segdistill.config.Config` into datasets, loaders and models."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..assets import load_shipped
from ..base.schema import fields_of
from ..config import Config, DataConfig, ModelConfig
from ..data.datasets import build_dataset, class_names, prepare_dataset
from ..data.sampling import EpochBatchSampler, SeededSamples
from ..data.transforms import train_transform
from ..errors import UserError
from ..models import build_segmentor
from ..models.input_norm import renormalise_input
from ..models.sources import build_hf, build_python, build_smp, build_torchvision, check_segmentation_output
from ..models.zoo import ARCH_KEYS, ZOOS, convert_checkpoint, converted_section, resolved_widths
from .checkpoint import load_model_weights, load_weights_file
from .evaluator import collate_eval
from .stopping import seeded_worker_ignores_stop_signal, worker_ignores_stop_signal


def build_datasets(config: Config, console: Console | None = None) -> tuple[Dataset, Dataset]:
    data = config.data
    prepare_dataset(data.dataset, data.root, (console or Console(stderr=True)).print)
    transform = train_transform(
        tuple(data.crop_size), tuple(data.scale), data.rotate, data.blur_p, data.flip_p, seed=config.seed
    )
    train = build_dataset(data.dataset, data.root, data.train_split, transform=transform, cache=data.cache)
    val = build_dataset(data.dataset, data.root, data.val_split, transform=None, cache=data.cache)
    check_class_count(config)
    return train, val


def check_class_count(config: Config) -> None:
    """``model.num_classes`` (and the teacher's) must be the dataset's class count."""
    expected = len(class_names(config.data.dataset))
    for key, section in (("model", config.model), ("teacher", config.teacher)):
        if section is not None and section.num_classes != expected:
            raise UserError(
                f"{key}.num_classes is {section.num_classes} but data.dataset={config.data.dataset} has "
                f"{expected} classes; set {key}.num_classes={expected}"
            )


def build_loaders(
    config: Config, train: Dataset, val: Dataset, rank: int = 0, world_size: int = 1
) -> tuple[DataLoader, DataLoader]:
    """Training batches of ``data.batch_size`` per process (this rank's shard of each epoch); the val
    split sharded over ranks without padding (rank r reads images r, r + world_size, ...), so the
    summed confusion matrix counts every image once."""
    data = config.data
    if len(train) < data.batch_size * world_size:
        per = f" x {world_size} processes" if world_size > 1 else ""
        raise UserError(f"the train split has {len(train)} images, fewer than data.batch_size={data.batch_size}{per}")
    generator = torch.Generator().manual_seed(config.seed)
    train_loader = DataLoader(
        SeededSamples(train),
        batch_sampler=EpochBatchSampler(len(train), data.batch_size, config.seed, rank, world_size),
        num_workers=data.workers,
        worker_init_fn=seeded_worker_ignores_stop_signal,
        generator=generator,
        persistent_workers=keep_workers(data),
    )
    val_indices = list(range(rank, len(val), world_size))
    val_loader = DataLoader(
        val,
        batch_size=config.eval.batch_size,
        sampler=val_indices,
        num_workers=data.workers,
        collate_fn=collate_eval,
        worker_init_fn=worker_ignores_stop_signal,
        generator=evaluation_generator(),
        persistent_workers=keep_workers(data),
    )
    return train_loader, val_loader


def keep_workers(data: DataConfig) -> bool:
    """DataLoader workers live across epochs (and evaluations) when they hold a ``data.cache``: new
    workers would start with empty caches and decode every file again."""
    return data.workers > 0 and data.cache


def evaluation_generator() -> torch.Generator:
    """An evaluation loader's own generator (fixed seed): without one, every ``iter(loader)`` draws its
    workers' base seed from the global torch RNG, so an evaluation during training would shift the
    dropout masks after it, and ``train.eval_interval`` would change the trained weights."""
    return torch.Generator().manual_seed(0)


# The ModelConfig keys that build_segmentor takes as keyword arguments, under the same names.
SEGMENTOR_OPTIONS = (
    "output_stride",
    "pretrained",
    "head_channels",
    "ppm_channels",
    "aux",
    "dropout",
    "backbone_kwargs",
    "align_corners",
    "contract_dilation",
    "aspp_projection",
)


def build_model(cfg: ModelConfig, num_classes: int | None = None, *, key: str = "model") -> nn.Module:
    """Build the model of a model (or teacher, ``key``) section from its ``source``, load
    ``cfg.weights`` if set (a zoo checkpoint is converted first, and must fit the section), and make
    it apply its own input normalisation when the section names one."""
    classes = num_classes or cfg.num_classes
    zoo_state = zoo_weights(cfg, key) if cfg.weights and is_zoo_spec(cfg.weights) else None
    if cfg.source == "segdistill":
        model: nn.Module = build_segmentor(cfg.head, cfg.backbone, classes, **fields_of(cfg, SEGMENTOR_OPTIONS))
    elif cfg.source == "hf":
        model = build_hf(cfg.arch, cfg.pretrained, classes, cfg.kwargs, key)
    else:
        assert cfg.arch is not None  # ModelConfig.validate
        model = LIBRARY_BUILDERS[cfg.source](cfg.arch, classes, cfg.kwargs, key)
    if zoo_state is not None:
        load_model_weights(model, zoo_state, cfg.weights)
    elif cfg.weights:
        load_weights(model, cfg.weights, cfg, key)
    renormalise_input(model, cfg.input_mean, cfg.input_std, cfg.input_channels)
    return model


def is_zoo_spec(spec: str) -> bool:
    """``mmseg:<path>``, ``apd:<path>`` or ``cirkd:<path>``."""
    return spec.split(":", 1)[0] in ZOOS and ":" in spec


def zoo_weights(cfg: ModelConfig, key: str) -> dict[str, torch.Tensor]:
    """Convert the zoo checkpoint ``cfg.weights`` names and check that the section describes the
    architecture (and the normalisation) it needs; one line naming the first key that differs."""
    assert cfg.weights is not None
    zoo, path = cfg.weights.split(":", 1)
    converted = convert_checkpoint(path, zoo)
    mismatch = section_mismatch(cfg, converted.section)
    if mismatch is not None:
        name, wanted, have = mismatch
        raise UserError(
            f"{key}.weights {cfg.weights} is a {converted.title}: it needs {key}.{name}={wanted!r}, "
            f"the config has {have} (`segdistill convert {path} --from {zoo}` prints the whole section)"
        )
    return converted.state


# The width keys whose None the model builder resolves (to a width that depends on the head and backbone).
RESOLVED_WIDTHS = ("head_channels", "ppm_channels")


def section_mismatch(cfg: ModelConfig, wanted: dict[str, Any]) -> tuple[str, Any, str] | None:
    """The first key of a converted model section ``wanted`` that the section ``cfg`` does not
    match: ``(key, wanted value, what the config has)``, or ``None`` when all match. A width the
    config leaves unset (``None``) is compared as the model builder resolves it; ``aux: false``
    matches (the auxiliary head's weights are left out); means and stds to a relative 1e-6."""
    known = {f.name for f in dataclasses.fields(cfg)}
    widths: dict[str, int] | None = None
    for name, value in wanted.items():
        if name == "weights" or name not in known:
            continue
        have = getattr(cfg, name)
        if name == "aux" and not have:
            continue  # a model without the auxiliary head: its weights are left out
        if name in ("input_mean", "input_std"):
            same = len(have) == len(value) and all(abs(a - b) <= 1e-6 * abs(b) for a, b in zip(have, value))
        elif name in RESOLVED_WIDTHS and have is None and cfg.source == "segdistill":
            if widths is None:
                section = {k: getattr(cfg, k) for k in ("head", "backbone", "num_classes", *ARCH_KEYS)}
                widths = resolved_widths(section)
            if widths.get(name) == value:
                continue
            return name, value, f"None (which the builder makes {widths.get(name)!r})"
        else:
            same = have == value
        if not same:
            return name, value, repr(have)
    return None


def check_converted_file(path: str, cfg: ModelConfig, key: str) -> None:
    """A ``.safetensors`` file written by ``segdistill convert`` stores the model section it was
    converted with: the section ``cfg`` that loads it must describe the same architecture and
    normalisation (a file without that metadata is not checked)."""
    found = converted_section(path)
    if found is None:
        return
    wanted, title = found
    mismatch = section_mismatch(cfg, wanted)
    if mismatch is not None:
        name, value, have = mismatch
        raise UserError(
            f"{path} was converted from a zoo checkpoint ({title}) with {key}.{name}={value!r}; "
            f"the config has {have} (the .yaml written beside it holds the whole section)"
        )


def check_model_output(cfg: ModelConfig, model: nn.Module, size: tuple[int, int], key: str = "model") -> None:
    """A model from another library (on its device) must return per-pixel scores for
    ``cfg.num_classes`` classes on a ``1 x 3 x H x W`` input: one probe forward; ours are known to."""
    if cfg.source != "segdistill":
        check_segmentation_output(model, cfg.num_classes, size, key)


LIBRARY_BUILDERS = {"torchvision": build_torchvision, "smp": build_smp, "python": build_python}


def load_weights(model: nn.Module, spec: str, cfg: ModelConfig | None = None, key: str = "model") -> None:
    """Load ``spec`` into ``model``: ``shipped:<name>`` (checksum-verified), a zoo checkpoint
    (``mmseg:<path>``, ``apd:<path>``, ``cirkd:<path>``, converted) or a file path.

    With ``cfg`` (the model section, ``key`` its name for messages), a converted ``.safetensors``
    file is checked against the section it was converted with (:func:`check_converted_file`)."""
    if spec.startswith("shipped:"):
        state, source = load_shipped(spec.split(":", 1)[1])
    elif is_zoo_spec(spec):
        zoo, path = spec.split(":", 1)
        state, source = convert_checkpoint(path, zoo).state, spec
    else:
        state, source = load_weights_file(spec), spec
        if cfg is not None and Path(spec).suffix == ".safetensors":
            check_converted_file(spec, cfg, key)
    load_model_weights(model, state, source)


def write_summary(path: Path, summary: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(summary, indent=2))
    tmp.replace(path)
