"""Weights shipped inside the package, verified against the checksums in ``manifest.json``.

Each entry of the manifest names the file, its SHA-256, the model section that builds the matching
architecture, the command that reproduces it and the val mIoU measured. See ``assets/README.md``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..base.weights_io import sha256
from ..errors import UserError

ASSETS_DIR = Path(__file__).resolve().parent
MANIFEST = ASSETS_DIR / "manifest.json"


def read_manifest(path: Path | None = None) -> dict:
    path = path or MANIFEST  # looked up at call time, so tests can point it elsewhere
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"weights manifest {path} is not valid JSON: {exc}") from exc


def shipped_entry(name: str) -> dict:
    manifest = read_manifest()
    if name not in manifest:
        known = ", ".join(manifest) or "none"
        raise UserError(f"no shipped weights named {name!r} in {MANIFEST} (known: {known})")
    return manifest[name]


def load_shipped(name: str) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict of shipped weights ``name`` after checking the file's SHA-256."""
    entry = shipped_entry(name)
    path = ASSETS_DIR / entry["file"]
    if not path.is_file():
        raise UserError(f"shipped weights file is missing: {path}; reproduce it with: {entry['command']}")
    digest = sha256(path)
    if digest != entry["sha256"]:
        raise UserError(
            f"shipped weights {path} were altered or corrupted (sha256 {digest[:12]}..., expected "
            f"{entry['sha256'][:12]}...); restore it (git checkout) or reproduce it with: {entry['command']}"
        )
    return load_file(str(path)), str(path)
