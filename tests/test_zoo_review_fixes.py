"""Review fixes of the model-zoo conversion and the zoos' evaluation protocols (issue 19):

1. a converted ``.safetensors`` carries its model section; loading it into a section with another
   normalisation or layout is one line naming the file and the key;
2. numpy scalars and dtypes in a checkpoint's ``meta`` load; any other pickled object is refused
   with a hint on how to re-save the file;
3. width keys left unset (``None``) are compared as the model builder resolves them;
4. ``eval.window_merge: softmax`` needs ``eval.mode: slide``;
5. the keep-ratio resize rounds as mmcv's ``rescale_size`` does (``int(x + 0.5)``).
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from torch import nn
from zoo_reference import cirkd, mmseg

from segdistill.config import load_config
from segdistill.engine.builders import build_model
from segdistill.engine.inference import keep_ratio_size, predict
from segdistill.errors import UserError
from segdistill.models.zoo import convert_checkpoint, write_converted

IMAGENET_RGB = ["teacher.input_mean=[123.675,116.28,103.53]", "teacher.input_std=[58.395,57.12,57.375]"]


def zoo_file(module, family: str, path: Path, meta: dict | None = None, **kwargs) -> Path:
    """A zoo checkpoint of an R50 with the real keys and shapes (uninitialised values: only loading
    is checked here; the logits are compared in test_zoo_convert.py)."""
    with torch.device("meta"):
        model = module.build(family, 50, 19, **kwargs)
    model.to_empty(device="cpu")
    for tensor in model.state_dict().values():
        tensor.zero_()
    if module is mmseg:
        module.save_checkpoint(model, path, meta=meta)
    else:
        module.save_checkpoint(model, path)
    return path


def _recipe(section: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump({"teacher": section}))
    return path


# --- 1. a converted .safetensors checks the section it is loaded into -------------------------------


@pytest.fixture(scope="module")
def cirkd_converted(tmp_path_factory) -> tuple[Path, dict]:
    """A CIRKD DeepLabV3 (v1: head width 256; BGR, 0-255, mean only) converted to safetensors."""
    folder = tmp_path_factory.mktemp("cirkd")
    source = zoo_file(cirkd, "deeplabv3", folder / "deeplabv3_resnet50_citys_best_model.pth", revision="v1")
    weights, section_path = write_converted(convert_checkpoint(source, "cirkd"), folder / "teacher.safetensors")
    return weights, yaml.safe_load(section_path.read_text())


def test_converted_safetensors_refuse_another_normalisation(cirkd_converted, tmp_path: Path) -> None:
    weights, section = cirkd_converted
    recipe = _recipe(section, tmp_path / "recipe.yaml")
    build_model(load_config(recipe).teacher, key="teacher")  # its own section loads
    with pytest.raises(UserError) as info:
        build_model(load_config(recipe, IMAGENET_RGB).teacher, key="teacher")
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{weights} was converted from a zoo checkpoint")
    assert "CIRKD" in message and "teacher.input_mean=[104.00698793, 116.66876762, 122.67891434]" in message
    assert "; the config has [123.675, 116.28, 103.53] (the .yaml written beside it" in message
    with pytest.raises(UserError, match=r"teacher.input_channels='bgr'; the config has 'rgb'"):
        build_model(load_config(recipe, ["teacher.input_channels=rgb"]).teacher, key="teacher")


def test_converted_safetensors_refuse_another_layout(cirkd_converted, tmp_path: Path) -> None:
    """align_corners changes no key or shape: without the stored section it would load silently."""
    weights, section = cirkd_converted
    recipe = _recipe(section, tmp_path / "recipe.yaml")
    with pytest.raises(UserError, match=r"teacher.align_corners=True; the config has False") as info:
        build_model(load_config(recipe, ["teacher.align_corners=false"]).teacher, key="teacher")
    assert str(weights) in str(info.value)
    with pytest.raises(UserError, match=r"model.contract_dilation=True; the config has False"):
        build_model(load_config(_recipe_model(section, tmp_path), ["model.contract_dilation=false"]).model)


def _recipe_model(section: dict, tmp_path: Path) -> Path:
    path = tmp_path / "model.yaml"
    path.write_text(yaml.safe_dump({"model": section}))
    return path


def test_safetensors_without_the_section_load_as_before(cirkd_converted, tmp_path: Path) -> None:
    """A safetensors file without the metadata (e.g. ``segdistill export --safetensors``) is not checked."""
    weights, section = cirkd_converted
    plain = tmp_path / "plain.safetensors"
    save_file(load_file(str(weights)), str(plain))
    recipe = _recipe({**section, "weights": str(plain)}, tmp_path / "recipe.yaml")
    build_model(load_config(recipe, IMAGENET_RGB).teacher, key="teacher")


# --- 2. numpy values in a checkpoint's meta --------------------------------------------------------


NUMPY_META = {"np_float": np.float64(1.5), "np_dtype": np.dtype("float32"), "np_int": np.int64(7), "cls": np.float64}


def test_numpy_scalars_and_dtypes_in_meta_convert(tmp_path: Path) -> None:
    path = zoo_file(mmseg, "pspnet", tmp_path / "pspnet.pth", meta=dict(NUMPY_META))
    converted = convert_checkpoint(path, "mmseg")
    assert converted.family == "pspnet" and converted.depth == 50


def test_numpy_1_scalar_name_converts(tmp_path: Path) -> None:
    """A file pickled under numpy 1.x names ``numpy.core.multiarray.scalar`` (numpy 2: ``numpy._core``)."""
    path = zoo_file(mmseg, "pspnet", tmp_path / "pspnet.pth", meta=dict(NUMPY_META))
    renamed = tmp_path / "numpy1.pth"
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(renamed, "w", zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            data = source.read(info)
            if info.filename.endswith("data.pkl"):
                data = data.replace(b"numpy._core.multiarray\nscalar", b"numpy.core.multiarray\nscalar")
                assert b"numpy.core.multiarray\nscalar" in data
            target.writestr(info, data)
    assert convert_checkpoint(renamed, "mmseg").family == "pspnet"


class MessageHub:
    """Stands for an mmengine object a checkpoint's meta may pickle."""

    def __init__(self) -> None:
        self.runtime_info = {"iter": 80000}


def test_other_objects_in_meta_are_refused_with_a_hint(tmp_path: Path) -> None:
    path = zoo_file(mmseg, "pspnet", tmp_path / "pspnet.pth", meta={**NUMPY_META, "message_hub": MessageHub()})
    allowed_before = set(map(str, torch.serialization.get_safe_globals()))
    with pytest.raises(UserError) as info:
        convert_checkpoint(path, "mmseg")
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "refusing to load" in message
    assert f"{__name__}.MessageHub" in message
    assert "publish_model.py" in message
    assert "re-save its state dict alone" in message
    # the numpy allowlist does not outlive the load
    assert set(map(str, torch.serialization.get_safe_globals())) == allowed_before


def test_numpy_arrays_stay_refused(tmp_path: Path) -> None:
    """Only scalars and dtypes: an ndarray's reconstruction is not allowed."""
    buffer = io.BytesIO()
    torch.save({"meta": {"a": np.zeros(3)}, "state_dict": {"w": torch.ones(1)}}, buffer)
    path = tmp_path / "array.pth"
    path.write_bytes(buffer.getvalue())
    with pytest.raises(UserError, match="refusing to load .*_reconstruct"):
        convert_checkpoint(path, "mmseg")


# --- 3. widths left unset are compared as the builder resolves them -------------------------------


def test_unset_widths_that_resolve_to_the_checkpoints_pass(tmp_path: Path) -> None:
    """mmseg PSPNet: head 512 (the builder's PSP default), PPM 512 (2048 / 4 bins)."""
    path = zoo_file(mmseg, "pspnet", tmp_path / "pspnet.pth")
    section = {**convert_checkpoint(path, "mmseg").section, "weights": f"mmseg:{path}"}
    section.pop("head_channels")
    section.pop("ppm_channels")
    teacher = build_model(load_config(_recipe(section, tmp_path / "recipe.yaml")).teacher, key="teacher")
    assert teacher.head.classifier.in_channels == 512


def test_unset_width_that_resolves_otherwise_is_refused(tmp_path: Path) -> None:
    """mmseg DeepLabV3: head 512; an unset head_channels builds 256 (the DeepLabV3 default)."""
    path = zoo_file(mmseg, "deeplabv3", tmp_path / "deeplabv3.pth")
    section = {**convert_checkpoint(path, "mmseg").section, "weights": f"mmseg:{path}"}
    section.pop("head_channels")
    with pytest.raises(UserError) as info:
        build_model(load_config(_recipe(section, tmp_path / "recipe.yaml")).teacher, key="teacher")
    message = str(info.value)
    assert "\n" not in message
    assert "needs teacher.head_channels=512, the config has None (which the builder makes 256)" in message


def test_unset_width_of_a_converted_safetensors_passes(cirkd_converted, tmp_path: Path) -> None:
    """CIRKD v1 DeepLabV3: head 256, the builder's DeepLabV3 default."""
    _, section = cirkd_converted
    section = {k: v for k, v in section.items() if k != "head_channels"}
    teacher = build_model(load_config(_recipe(section, tmp_path / "recipe.yaml")).teacher, key="teacher")
    assert teacher.head.classifier.in_channels == 256


# --- 4. window_merge: softmax needs mode: slide -----------------------------------------------------


def test_window_softmax_with_whole_image_is_refused() -> None:
    with pytest.raises(UserError) as info:
        load_config(None, ["eval.window_merge=softmax"])
    message = str(info.value)
    assert "\n" not in message and "eval.window_merge=softmax" in message and "eval.mode=whole" in message
    assert load_config(None, ["eval.window_merge=softmax", "eval.mode=slide"]).eval.window_merge == "softmax"


# --- 5. keep-ratio sizes round as mmcv's rescale_size --------------------------------------------


class SizeProbe(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[tuple[int, int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(tuple(x.shape[-2:]))
        return x[:, :2]


def test_keep_ratio_size_rounds_half_up() -> None:
    """10 x 5 into (25, 25): factor 2.5, width 12.5 -> mmcv int(12.5 + 0.5) = 13 (round(): 12, int(): 12)."""
    assert keep_ratio_size((10, 5), 2.5) == (25, 13)
    assert keep_ratio_size((10, 7), 1.5) == (15, 11)  # 10.5: round() gives 10
    probe = SizeProbe()
    predict(probe, torch.zeros(1, 3, 10, 5), "whole", keep_ratio=(25, 25))
    assert probe.sizes == [(25, 13)]
