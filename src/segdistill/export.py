"""Export trained weights (safetensors), optionally registering them as shipped weights."""

from __future__ import annotations

import json
from pathlib import Path

from .engine.checkpoint import load_checkpoint, sha256
from .errors import UserError


def export_safetensors(
    checkpoint: str | Path,
    out: str | Path,
    *,
    half: bool = False,
    drop_aux: bool = False,
    name: str | None = None,
    command: str = "",
) -> dict:
    """Write the model weights of a training checkpoint to ``out`` (.safetensors).

    ``half`` stores float16 (floating tensors only); ``drop_aux`` leaves out ``aux_head.*``. With
    ``name``, adds or updates the entry in ``manifest.json`` beside ``out`` (file, sha256, model
    section, val mIoU, the reproducing command)."""
    from safetensors.torch import save_file

    state = load_checkpoint(checkpoint)
    if "model" not in state:
        raise UserError(f"{checkpoint} is not a segdistill training checkpoint (no 'model' entry)")
    weights = {}
    for key, value in state["model"].items():
        if drop_aux and key.startswith("aux_head."):
            continue
        if half and value.is_floating_point():
            value = value.half()
        weights[key] = value.contiguous()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    save_file(weights, str(tmp))
    tmp.chmod(0o644)
    tmp.replace(out)
    info = {"bytes": out.stat().st_size, "sha256": sha256(out)}
    if name:
        manifest_path = out.parent / "manifest.json"
        manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
        model_cfg = dict(state.get("config", {}).get("model", {}))
        model_cfg.pop("weights", None)
        model_cfg.pop("pretrained", None)
        if drop_aux:
            model_cfg["aux"] = False
        manifest[name] = {
            "file": out.name,
            "sha256": info["sha256"],
            "bytes": info["bytes"],
            "dtype": "float16" if half else "float32",
            "model": model_cfg,
            "val_mIoU": state.get("best_miou"),
            "step": state.get("step"),
            "command": command,
        }
        manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return info
