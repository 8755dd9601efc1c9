"""Safe reading of weight files: ``torch.load(weights_only=True)`` (a file carrying pickled code is
refused), safetensors, strict state-dict loading with one-line errors, and file digests."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from ..errors import UserError


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a training checkpoint with ``torch.load(weights_only=True)``; refuse pickled code."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = next((line for line in lines if "Unsupported global" in line), lines[0] if lines else "")
        detail = detail.split(". Please use", 1)[0]
        raise UserError(f"refusing to load {path}: it holds pickled objects beyond tensors ({detail})") from exc
    except Exception as exc:  # noqa: BLE001 - whatever a damaged zip or pickle stream raises
        detail = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise UserError(f"checkpoint {path} is corrupt or truncated: {detail}") from exc
    if not isinstance(obj, dict):
        raise UserError(f"checkpoint {path} does not hold a dict of tensors")
    return obj


def load_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A model state dict from a ``.safetensors`` file or a training checkpoint (its ``model`` entry)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError, a cut header
            detail = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise UserError(f"weights file {path} is corrupt or truncated: {detail}") from exc
    obj = load_checkpoint(path)
    state = obj.get("model", obj)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path} holds no model state dict")
    return state


def load_model_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Load ``state`` into ``model`` strictly, with one-line errors naming the first mismatch.

    Auxiliary-head weights are skipped when the model has no auxiliary head."""
    own = model.state_dict()
    if not any(k.startswith("aux_head.") for k in own):  # the auxiliary head is training-only
        state = {k: v for k, v in state.items() if not k.startswith("aux_head.")}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise UserError(f"weights in {source} do not fit this model ({detail}); was it saved from another model?")
    for key, value in own.items():
        if state[key].shape != value.shape:
            raise UserError(
                f"weights in {source} do not fit this model: {key} has shape {tuple(state[key].shape)}, "
                f"the model expects {tuple(value.shape)} (another class count or width?)"
            )
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
