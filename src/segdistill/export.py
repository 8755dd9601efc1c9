"""Export trained weights (safetensors, optionally registered as shipped weights) and models (ONNX)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from .engine.checkpoint import load_checkpoint, sha256
from .engine.inference import forward_logits
from .errors import UserError
from .predict import model_from_checkpoint


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
            "val_mIoU": state.get("best_score", state.get("best_miou")),
            "step": state.get("step"),
            "command": command,
        }
        manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return info


class _LogitsOnly(nn.Module):
    """The model's main logits as the single output, at the input size (``B x K x H x W``; a model
    whose logits are coarser, e.g. SegFormer's 1/4, is upsampled bilinearly as in evaluation)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return forward_logits(self.model, image)


def export_onnx(checkpoint: str | Path, out: str | Path, size: tuple[int, int] | None = None) -> dict:
    """Write the model of a training checkpoint as ONNX (input ``image``: ``B x 3 x H x W`` normalised,
    dynamic batch; output ``logits``: ``B x K x H x W``) with torch's dynamo exporter, then, when
    onnxruntime is installed, compare its output with PyTorch's on a random input.

    Returns ``{"bytes", "max_abs_diff"}`` (``max_abs_diff`` is None without onnxruntime)."""
    model, config = model_from_checkpoint(checkpoint)
    wrapped = _LogitsOnly(model).eval()
    height, width = size or tuple(config["data"]["crop_size"])
    example = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(0))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    try:
        program = torch.onnx.export(
            wrapped,
            (example,),
            input_names=["image"],
            output_names=["logits"],
            dynamo=True,
            dynamic_shapes={"image": {0: torch.export.Dim("batch")}},
            verbose=False,
        )
    except ImportError as exc:
        raise UserError(f"ONNX export needs the onnx extras: pip install 'segdistill[onnx]' ({exc})") from exc
    program.save(str(tmp))
    tmp.replace(out)
    info: dict = {"bytes": out.stat().st_size, "max_abs_diff": None}
    try:
        import onnxruntime
    except ImportError:
        return info
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = wrapped(example).numpy()
    got = session.run(None, {"image": example.numpy()})[0]
    info["max_abs_diff"] = float(abs(got - expected).max())
    return info
