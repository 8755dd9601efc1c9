"""Convert a model-zoo checkpoint (mmsegmentation, the APD release, CIRKD) into segdistill's layout.

``convert_checkpoint(path, zoo)`` reads the file safely (``torch.load(weights_only=True)``: pickled
code is refused), unwraps its metadata (``{"meta", "state_dict"}``, ``{"epoch", "state_dict",
"optimizer"}``, a bare state dict; a DataParallel ``module.`` prefix), recognises the model family
and depth from the keys, maps every key (:mod:`.layouts`), builds the matching segdistill model and
checks that every key and shape fits it. The result carries the state dict and the model section
that builds that model, with the normalisation the checkpoint was trained with.

numpy scalars and dtypes in a checkpoint's ``meta`` (mmsegmentation's training metadata) are
allowlisted for that load; any other pickled object is still refused. A written ``.safetensors``
carries its model section in its metadata (:data:`SECTION_METADATA`), which loading it into a model
section checks (``engine.builders.load_weights``).
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import save_file

from ...base.weights_io import load_checkpoint
from ...errors import UserError
from ..segmentor import build_segmentor
from .layouts import LAYOUTS, Layout

try:  # the function that rebuilds a pickled numpy scalar
    from numpy._core.multiarray import scalar as _numpy_scalar  # numpy 2.x
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import scalar as _numpy_scalar

ZOOS = ("mmseg", "apd", "cirkd")
ZOO_NAMES = {"mmseg": "mmsegmentation", "apd": "the APD release (or semseg)", "cirkd": "CIRKD"}
DEPTHS = {6: 50, 23: 101, 36: 152}  # blocks in ResNet stage 3 -> depth
ARCH_KEYS = (
    "head",
    "backbone",
    "output_stride",
    "head_channels",
    "ppm_channels",
    "aux",
    "backbone_kwargs",
    "align_corners",
    "contract_dilation",
    "aspp_projection",
)
# the order of a written model section's keys
SECTION_ORDER = (
    "source",
    "head",
    "backbone",
    "num_classes",
    *(k for k in ARCH_KEYS if k not in ("head", "backbone")),
    "input_mean",
    "input_std",
    "input_channels",
    "weights",
)
# The safetensors metadata keys of a converted file: its model section (JSON) and what it was converted from.
SECTION_METADATA = "segdistill_model_section"
TITLE_METADATA = "segdistill_title"
# Width keys whose ``None`` the model builder resolves, and where the state dict shows them:
# (key, dimension) of the weight whose shape is that width.
WIDTH_KEYS = {"head_channels": ("head.classifier.weight", 1), "ppm_channels": ("head.ppm.0.1.0.weight", 0)}
REFUSAL_HINT = (
    "if you trust the file, re-save its state dict alone (without meta), e.g. with mmseg's tools/publish_model.py "
    "(1.x: tools/misc/publish_model.py)"
)


@dataclass
class Converted:
    """A converted checkpoint: ``state`` in segdistill keys, ``section`` the model section that
    builds the model it fits (``source: segdistill`` keys, the normalisation included)."""

    source: Path
    zoo: str
    family: str
    depth: int
    state: dict[str, torch.Tensor]
    section: dict
    notes: tuple[str, ...] = ()

    layout: str = ""

    @property
    def title(self) -> str:
        who = self.layout or ZOO_NAMES[self.zoo]
        return f"{self.family} R{self.depth} ({who}), {self.section['num_classes']} classes"


def numpy_safe_globals() -> list[Callable | tuple[Callable, str]]:
    """The numpy globals that a checkpoint's ``meta`` may carry and that only rebuild plain values:
    the scalar reconstructor (``numpy.core.multiarray.scalar`` in files pickled by numpy 1.x,
    ``numpy._core.multiarray.scalar`` by numpy 2.x), ``numpy.dtype`` with its per-type classes
    (``numpy.dtypes.Float64DType``, ...: a dtype's state is set on them) and the numeric scalar
    types (``numpy.float64``, ...). Nothing else."""
    scalar = _numpy_scalar
    numeric = [
        np.bool_,
        *(np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64),
        *(np.float16, np.float32, np.float64, np.complex64, np.complex128),
    ]
    allowed: list[Callable | tuple[Callable, str]] = [np.dtype, *numeric]
    allowed += list(dict.fromkeys(type(np.dtype(t)) for t in numeric if type(np.dtype(t)) is not np.dtype))
    own = f"{scalar.__module__}.{scalar.__qualname__}"
    allowed.append(scalar)
    if _named_globals():  # a pickle of the other numpy major version names the function differently
        for name in ("numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar"):
            if name != own:
                allowed.append((scalar, name))
    return allowed


def _named_globals() -> bool:
    """``torch.serialization.safe_globals`` takes ``(function, name)`` pairs (torch 2.6 and later)."""
    version = tuple(int(part) for part in torch.__version__.split("+")[0].split(".")[:2] if part.isdigit())
    return version >= (2, 6)


def _load_zoo_file(path: Path) -> dict:
    """``load_checkpoint`` with numpy's scalar and dtype globals allowed (:func:`numpy_safe_globals`);
    a refusal (any other pickled object) says how to get a loadable file."""
    safe_globals = getattr(torch.serialization, "safe_globals", None)  # torch 2.5 and later
    try:
        if safe_globals is None:
            return load_checkpoint(path)
        with safe_globals(numpy_safe_globals()):
            return load_checkpoint(path)
    except UserError as exc:
        if isinstance(exc.__cause__, pickle.UnpicklingError):
            raise UserError(f"{exc}; {REFUSAL_HINT}") from exc
        raise


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The model weights of a zoo file: its ``state_dict`` (or ``model``) entry, or the file itself
    when it is a bare state dict; a ``module.`` prefix on every key is removed."""
    obj = _load_zoo_file(path)
    state = obj
    for entry in ("state_dict", "model"):
        if isinstance(obj.get(entry), dict):
            state = obj[entry]
            break
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors or len(tensors) != len(state):
        raise UserError(f"{path} holds no model state dict (top-level keys: {sorted(obj)[:6]})")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors


def identify(keys: list[str]) -> list[Layout]:
    """The layouts whose signature the keys carry."""
    found = []
    for layout in LAYOUTS:
        has = all(any(k.startswith(p) for k in keys) for p in layout.signature)
        lacks = not any(k.startswith(p) for k in keys for p in layout.absent)
        if has and lacks:
            found.append(layout)
    return found


def convert_checkpoint(path: str | Path, zoo: str) -> Converted:
    """Read ``path`` as a checkpoint of ``zoo`` (``mmseg`` | ``apd`` | ``cirkd``) and convert it.

    Raises :class:`UserError` (one line naming the file and the first keys that differ) for a file
    of another zoo or family, missing or extra keys, shapes that do not fit, a truncated file."""
    path = Path(path)
    if zoo not in ZOOS:
        raise UserError(f"unknown model zoo {zoo!r}; choose one of: {', '.join(ZOOS)}")
    state = read_state_dict(path)
    keys = list(state)
    layouts = identify(keys)
    ours = [layout for layout in layouts if layout.zoo == zoo]
    if not ours:
        if layouts:
            other = layouts[0]
            raise UserError(
                f"{path} is a {other.family} checkpoint of {ZOO_NAMES[other.zoo]}, not of {ZOO_NAMES[zoo]}; "
                f"convert it with --from {other.zoo} (weights: {other.zoo}:{path})"
            )
        families = ", ".join(sorted({f"{lay.family}" for lay in LAYOUTS if lay.zoo == zoo}))
        raise UserError(
            f"{path} is not a {ZOO_NAMES[zoo]} checkpoint of a known family ({families}); its first keys: {keys[:4]}"
        )
    layout = ours[0]
    depth = _depth(path, keys, layout)
    mapped: dict[str, torch.Tensor] = {}
    unmapped = []
    for key, value in state.items():
        target = layout.map_key(key)
        if target is None:
            unmapped.append(key)
        else:
            mapped[target] = value
    if unmapped:
        raise UserError(
            f"{path}: keys that a {layout.family} R{depth} of {ZOO_NAMES[zoo]} does not have: {unmapped[:4]}"
        )
    classifier = mapped.get("head.classifier.weight")
    if classifier is None:
        raise UserError(f"{path}: no classifier weight (the {layout.family} layout's conv_seg / cls) found")
    section = {"source": "segdistill", **layout.section, "num_classes": int(classifier.shape[0])}
    section["backbone"] = section["backbone"].format(depth=depth)
    found = state_widths(mapped)
    section["head_channels"] = found["head_channels"]
    if "ppm_channels" in section and "ppm_channels" in found:
        section["ppm_channels"] = found["ppm_channels"]
    section["aux"] = any(k.startswith("aux_head.") for k in mapped)
    if layout.adjust is not None:
        section = layout.adjust(section)
    _check_fits(path, mapped, section, layout, depth)
    if layout.rewrite is not None:
        mapped = layout.rewrite(mapped)
    section = {k: section[k] for k in SECTION_ORDER if k in section}
    return Converted(path, zoo, layout.family, depth, mapped, section, layout.notes, layout.source)


def _depth(path: Path, keys: list[str], layout: Layout) -> int:
    blocks = {k[len(layout.blocks_key) :].split(".", 1)[0] for k in keys if k.startswith(layout.blocks_key)}
    count = len(blocks)
    if count not in DEPTHS:
        raise UserError(f"{path}: ResNet stage 3 has {count} blocks; known depths: 50 (6), 101 (23), 152 (36)")
    return DEPTHS[count]


def state_widths(state: dict[str, torch.Tensor]) -> dict[str, int]:
    """The :data:`WIDTH_KEYS` a segdistill state dict shows (``ppm_channels`` only for a PSP head)."""
    return {name: int(state[key].shape[dim]) for name, (key, dim) in WIDTH_KEYS.items() if key in state}


def resolved_widths(section: dict) -> dict[str, int]:
    """The widths the model builder gives the model ``section`` describes, its ``None`` widths
    resolved as :func:`~segdistill.models.build_segmentor` resolves them (the model is built on the
    meta device: shapes only)."""
    with torch.device("meta"):
        model = build_from_section({**section, "aux": False})
    return state_widths(model.state_dict())


def build_from_section(section: dict) -> torch.nn.Module:
    """The segdistill model a converted section describes (random weights)."""
    return build_segmentor(
        section["head"],
        section["backbone"],
        section["num_classes"],
        **{k: section[k] for k in ARCH_KEYS if k in section and k not in ("head", "backbone")},
    )


def _check_fits(path: Path, state: dict[str, torch.Tensor], section: dict, layout: Layout, depth: int) -> None:
    """Every key of the segdistill model present with its shape, no key left over.

    BatchNorm's ``num_batches_tracked`` counters (used by no forward pass) are filled with 0 when a
    checkpoint predates them."""
    with torch.device("meta"):  # shapes and dtypes only: no memory, no initialisation
        own = build_from_section(section).state_dict()
    for key, value in own.items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros(value.shape, dtype=value.dtype)
    what = f"{path}: a {layout.family} R{depth} of {ZOO_NAMES[layout.zoo]}"
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    if missing:
        raise UserError(f"{what} needs keys the file lacks (in segdistill names): {missing[:4]}")
    if extra:
        raise UserError(f"{what} has no place for keys (in segdistill names): {extra[:4]}")
    for key, value in own.items():
        if state[key].shape != value.shape:
            raise UserError(
                f"{what}: {key} has shape {tuple(state[key].shape)}, the architecture needs {tuple(value.shape)}"
            )
    for key, value in list(state.items()):
        state[key] = value.to(own[key].dtype).contiguous()


def write_converted(converted: Converted, out: str | Path) -> tuple[Path, Path]:
    """Write ``out`` (safetensors) and ``out`` with ``.yaml`` (the model section, ``weights: out``),
    each through a temporary file renamed into place: never a half-written result."""
    out = Path(out)
    if out.suffix != ".safetensors":
        raise UserError(f"--out must end in .safetensors, got {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    metadata = {
        "converted_from": str(converted.source),
        "zoo": converted.zoo,
        "family": converted.family,
        TITLE_METADATA: converted.title,
        SECTION_METADATA: converted.section,  # checked when the file is loaded into a model section
    }
    tmp = out.with_name(out.name + ".tmp")
    save_file(converted.state, str(tmp), metadata={k: json.dumps(v) for k, v in metadata.items()})
    os.replace(tmp, out)
    section_path = out.with_suffix(".yaml")
    section = {**converted.section, "weights": str(out)}
    body = yaml.safe_dump(section, sort_keys=False, default_flow_style=None)
    text = f"# {converted.title}, converted from {converted.source}\n" + body
    tmp_yaml = section_path.with_name(section_path.name + ".tmp")
    tmp_yaml.write_text(text)
    os.replace(tmp_yaml, section_path)
    return out, section_path


def converted_section(path: str | Path) -> tuple[dict, str] | None:
    """The model section (and title) a converted ``.safetensors`` file stores in its metadata;
    ``None`` for a file without it (e.g. ``segdistill export --safetensors``)."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError, a cut header
        detail = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise UserError(f"weights file {path} is corrupt or truncated: {detail}") from exc
    if SECTION_METADATA not in metadata:
        return None
    try:
        section = json.loads(metadata[SECTION_METADATA])
        title = json.loads(metadata.get(TITLE_METADATA, '""'))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: its {SECTION_METADATA} metadata is not JSON ({exc})") from exc
    if not isinstance(section, dict):
        raise UserError(f"{path}: its {SECTION_METADATA} metadata is not a model section")
    return section, str(title)
