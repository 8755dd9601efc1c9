"""Shipped weights: checksum verified, clear errors when missing or altered."""

import json

import pytest
import torch
from safetensors.torch import save_file

from segdistill import UserError, assets
from segdistill.config import load_config
from segdistill.engine.builders import build_model, load_weights
from segdistill.quickstart import recipe_path


def test_the_shipped_teacher_loads_and_fits_its_recipe():
    entry = assets.shipped_entry("synthetic_teacher")
    assert (assets.ASSETS_DIR / entry["file"]).stat().st_size <= 25_000_000
    config = load_config(recipe_path("synthetic/apd.yaml"))
    assert config.teacher.weights == "shipped:synthetic_teacher"
    teacher = build_model(config.teacher)  # loads and verifies the checksum
    student = build_model(config.model)
    n_t = sum(p.numel() for p in teacher.parameters())
    n_s = sum(p.numel() for n, p in student.named_parameters() if not n.startswith("aux_head."))
    assert n_t / n_s >= 4.0, (n_t, n_s)


@pytest.fixture
def fake_assets(tmp_path, monkeypatch):
    weights = {"w": torch.ones(2, 2)}
    save_file(weights, str(tmp_path / "t.safetensors"))
    from segdistill.engine.checkpoint import sha256

    manifest = {"t": {"file": "t.safetensors", "sha256": sha256(tmp_path / "t.safetensors"), "command": "make t"}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setattr(assets, "ASSETS_DIR", tmp_path)
    monkeypatch.setattr(assets, "MANIFEST", tmp_path / "manifest.json")
    return tmp_path


def test_checksum_missing_and_altered(fake_assets):
    state, _ = assets.load_shipped("t")
    assert torch.equal(state["w"], torch.ones(2, 2))
    with pytest.raises(UserError, match="no shipped weights named 'x'"):
        assets.load_shipped("x")
    data = (fake_assets / "t.safetensors").read_bytes()
    (fake_assets / "t.safetensors").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(UserError, match="altered or corrupted.*make t"):
        assets.load_shipped("t")
    (fake_assets / "t.safetensors").unlink()
    with pytest.raises(UserError, match="missing.*make t"):
        assets.load_shipped("t")


def test_weights_from_another_model_are_refused():
    from segdistill import build_segmentor

    model = build_segmentor("pspnet", "mobilenetv2_100", 19, head_channels=8)
    with pytest.raises(UserError, match="do not fit this model"):
        load_weights(model, "shipped:synthetic_teacher")
