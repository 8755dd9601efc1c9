"""``segdistill export --onnx``: the ONNX model's output equals PyTorch's (onnxruntime)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segdistill.cli import main


def test_onnx_output_equals_pytorch(tiny_overrides, tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    from segdistill.config import load_config
    from segdistill.engine.builders import build_model
    from segdistill.engine.checkpoint import load_checkpoint

    assert main(["train", "configs/synthetic/student.yaml", *tiny_overrides, "name=m"]) == 0
    ckpt = tmp_path / "runs/m/checkpoints/last.pt"
    out = tmp_path / "m.onnx"
    capsys.readouterr()
    assert main(["export", str(ckpt), "--onnx", str(out), "--size", "64", "96"]) == 0
    assert "onnxruntime vs PyTorch max |diff|" in capsys.readouterr().err

    model = build_model(load_config("configs/synthetic/student.yaml", tiny_overrides).model)
    model.load_state_dict(load_checkpoint(ckpt)["model"])
    model.eval()
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for batch in (1, 3):  # dynamic batch
        x = torch.randn(batch, 3, 64, 96)
        got = session.run(None, {"image": x.numpy()})[0]
        with torch.no_grad():
            expected = model(x)
        expected = (expected["out"] if isinstance(expected, dict) else expected).numpy()
        assert got.shape == (batch, 19, 64, 96)
        assert np.abs(got - expected).max() < 1e-4
