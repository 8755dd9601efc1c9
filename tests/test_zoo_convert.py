"""Model-zoo checkpoints (mmsegmentation, the APD release / semseg, CIRKD) convert to segdistill models
whose logits equal the source architecture's own forward.

The sources cannot be installed here (mmcv must be compiled), so ``tests/zoo_reference/`` holds
minimal re-implementations written from their public code with the sources' module names: a
randomly initialised model there, saved in its zoo's exact file format, is the "zoo checkpoint".
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file
from torch import nn
from zoo_reference import apd, cirkd, mmseg, semseg

from segdistill.cli import main
from segdistill.config import load_config
from segdistill.engine.builders import build_model
from segdistill.errors import UserError
from segdistill.models import TimmBackbone
from segdistill.models.input_norm import InputRenormalisation, renormalise_input
from segdistill.models.zoo import build_from_section, convert_checkpoint, write_converted

SIZE = (65, 89)  # 8k+1 on each side, as the semseg / APD forward asserts


def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Trained-looking statistics: BN running stats and affine terms away from their init, the
    classifiers' weights large enough that logits spread over several units."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=generator) * 0.2 - 0.1)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) * 0.5 + 0.5)
            module.bias.data.copy_(torch.rand(n, generator=generator) * 0.2 - 0.1)
            module.num_batches_tracked.fill_(80000)
        elif isinstance(module, nn.Conv2d) and module.out_channels <= 60 and module.kernel_size == (1, 1):
            module.weight.data.mul_(30.0)  # the classifiers
    return model.eval()


def source_logits(zoo: str, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The source's own main logits at the input size (and auxiliary logits where it has them)."""
    with torch.no_grad():
        if zoo == "cirkd":
            out, aux, _ = model(x)
            up = [F.interpolate(t, x.shape[2:], mode="bilinear", align_corners=True) for t in (out, aux)]
            return up[0], up[1]
        aux = model.forward_aux(x) if hasattr(model, "forward_aux") else None
        return model(x), aux


def our_logits(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    model.eval()
    model.aux_in_eval = True
    with torch.no_grad():
        out = model(x)
    model.aux_in_eval = False
    return out["out"], out.get("aux")


def assert_equal_logits(ours: torch.Tensor, source: torch.Tensor) -> None:
    """Equal to 1e-5, relative to the logits' range (they span several units)."""
    assert ours.shape == source.shape
    scale = max(1.0, source.abs().max().item())
    assert source.abs().max().item() > 1.0  # the comparison is not between near-zero maps
    assert (ours - source).abs().max().item() <= 1e-5 * scale


# (reference module, --from, family, build keyword arguments, class count)
CASES = {
    "mmseg-pspnet": (mmseg, "mmseg", "pspnet", {}, 19),
    "mmseg-deeplabv3": (mmseg, "mmseg", "deeplabv3", {}, 19),
    "mmseg-deeplabv3plus": (mmseg, "mmseg", "deeplabv3plus", {}, 19),
    "apd-pspnet": (apd, "apd", "pspnet", {}, 19),
    "apd-pspnet-context": (apd, "apd", "pspnet", {}, 60),  # the release's contracted dilation for 60 classes
    "apd-deeplabv3": (apd, "apd", "deeplabv3", {}, 19),
    "semseg-pspnet": (semseg, "apd", "pspnet", {}, 19),
    "cirkd-deeplabv3": (cirkd, "cirkd", "deeplabv3", {"revision": "v1"}, 19),
    "cirkd-pspnet": (cirkd, "cirkd", "pspnet", {"revision": "v1"}, 19),
    "cirkdv2-deeplabv3": (cirkd, "cirkd", "deeplabv3", {"revision": "v2"}, 19),
    "cirkdv2-pspnet": (cirkd, "cirkd", "pspnet", {"revision": "v2"}, 19),
}


def write_source(case: str, path: Path, depth: int = 50) -> nn.Module:
    module, _, family, kwargs, classes = CASES[case]
    torch.manual_seed(0)
    model = randomise(module.build(family, depth, classes, **kwargs))
    module.save_checkpoint(model, path)
    return model


@pytest.mark.parametrize("case", sorted(CASES))
def test_converted_checkpoint_gives_the_source_logits(case: str, tmp_path: Path) -> None:
    _, zoo, family, _, classes = CASES[case]
    source = write_source(case, tmp_path / "zoo.pth")
    converted = convert_checkpoint(tmp_path / "zoo.pth", zoo)
    assert (converted.family, converted.depth, converted.section["num_classes"]) == (family, 50, classes)
    with torch.device("meta"):
        ours = build_from_section(converted.section)
    ours.load_state_dict(converted.state, assign=True)
    x = torch.randn(2, 3, *SIZE, generator=torch.Generator().manual_seed(1))
    source_out, source_aux = source_logits(zoo, source, x)
    our_out, our_aux = our_logits(ours, x)
    assert_equal_logits(our_out, source_out)
    if source_aux is not None:
        assert_equal_logits(our_aux, source_aux)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["mmseg-pspnet", "semseg-pspnet", "cirkd-deeplabv3"])
def test_r101_through_the_cli_and_the_written_section(case: str, tmp_path: Path, capsys) -> None:
    """``segdistill convert`` writes safetensors and a model section; a config whose model section is
    that file's builds a model with the source's logits (R101, the zoos' teachers)."""
    _, zoo, _, _, _ = CASES[case]
    source = write_source(case, tmp_path / "zoo.pth", depth=101)
    out = tmp_path / "teacher.safetensors"
    assert main(["convert", str(tmp_path / "zoo.pth"), "--from", zoo, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    section = yaml.safe_load((tmp_path / "teacher.yaml").read_text())
    assert yaml.safe_load(printed) == section
    assert section["weights"] == str(out) and "R101" in (tmp_path / "teacher.yaml").read_text().splitlines()[0]
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"model": section}))
    model = build_model(load_config(recipe).model)
    x = torch.randn(1, 3, *SIZE, generator=torch.Generator().manual_seed(2))  # as the pipeline normalises
    # the source sees its own normalisation (CIRKD: BGR, mean subtracted); ours converts inside the model
    own = InputRenormalisation(section["input_mean"], section["input_std"], section["input_channels"])
    assert_equal_logits(our_logits(model, x)[0], source_logits(zoo, source, own(model, (x,))[0])[0])


@pytest.fixture(scope="module")
def mmseg_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("zoo") / "pspnet_r50.pth"
    write_source("mmseg-pspnet", path)
    return path


def test_weights_spec_converts_on_the_fly_and_checks_the_section(mmseg_file: Path, tmp_path: Path) -> None:
    """``weights: mmseg:PATH`` converts as the model is built; a section that does not describe the
    checkpoint's architecture (or its normalisation) is one line naming the key."""
    converted = convert_checkpoint(mmseg_file, "mmseg")
    section = {**converted.section, "weights": f"mmseg:{mmseg_file}"}
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"teacher": section}))
    teacher = build_model(load_config(recipe).teacher, key="teacher")
    x = torch.randn(1, 3, *SIZE, generator=torch.Generator().manual_seed(3))
    reference = build_from_section(converted.section)
    reference.load_state_dict(converted.state)
    assert torch.equal(our_logits(teacher, x)[0], our_logits(reference, x)[0])
    for override, key in (("teacher.backbone=resnet50d", "teacher.backbone"), ("teacher.align_corners=true", None)):
        with pytest.raises(UserError, match=rf"needs {key or 'teacher.align_corners'}=") as info:
            build_model(load_config(recipe, [override]).teacher, key="teacher")
        assert "\n" not in str(info.value) and "pspnet R50 (mmsegmentation)" in str(info.value)
    with pytest.raises(UserError, match="needs teacher.input_channels='rgb'"):
        build_model(load_config(recipe, ["teacher.input_channels=bgr"]).teacher, key="teacher")


def test_written_files_are_complete(mmseg_file: Path, tmp_path: Path) -> None:
    converted = convert_checkpoint(mmseg_file, "mmseg")
    weights, section_path = write_converted(converted, tmp_path / "out" / "psp.safetensors")
    state = load_file(str(weights))
    assert set(state) == set(converted.state)
    assert all(torch.equal(state[k], converted.state[k]) for k in state)
    section = yaml.safe_load(section_path.read_text())
    assert section == {**converted.section, "weights": str(weights)}
    assert not list((tmp_path / "out").glob("*.tmp"))
    with pytest.raises(UserError, match="must end in .safetensors"):
        write_converted(converted, tmp_path / "psp.pt")


def _save_variant(mmseg_file: Path, path: Path, change) -> Path:
    obj = torch.load(mmseg_file, weights_only=True)
    change(obj["state_dict"])
    torch.save(obj, path)
    return path


def test_bad_checkpoints_are_one_line_naming_file_and_keys(mmseg_file: Path, tmp_path: Path) -> None:
    def fails(path: Path, zoo: str, *fragments: str) -> None:
        with pytest.raises(UserError) as info:
            convert_checkpoint(path, zoo)
        message = str(info.value)
        assert "\n" not in message and str(path) in message
        for fragment in fragments:
            assert fragment in message

    fails(mmseg_file, "apd", "pspnet checkpoint of mmsegmentation", "--from mmseg")
    fails(mmseg_file, "cirkd", "not of CIRKD", "--from mmseg")
    missing = _save_variant(mmseg_file, tmp_path / "missing.pth", lambda s: s.pop("decode_head.bottleneck.bn.weight"))
    fails(missing, "mmseg", "lacks", "head.bottleneck.1.weight")
    extra = _save_variant(
        mmseg_file, tmp_path / "extra.pth", lambda s: s.__setitem__("decode_head.lateral.conv.weight", torch.ones(1))
    )
    fails(extra, "mmseg", "does not have", "decode_head.lateral.conv.weight")
    shape = _save_variant(
        mmseg_file,
        tmp_path / "shape.pth",
        lambda s: s.__setitem__("decode_head.bottleneck.conv.weight", torch.ones(512, 4096, 1, 1)),
    )
    fails(shape, "mmseg", "head.bottleneck.0.weight has shape (512, 4096, 1, 1)", "(512, 4096, 3, 3)")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(mmseg_file.read_bytes()[: mmseg_file.stat().st_size // 2])
    fails(truncated, "mmseg", "corrupt or truncated")
    pickled = tmp_path / "pickled.pth"
    torch.save({"state_dict": {"w": torch.ones(1)}, "hook": Path("x")}, pickled)
    fails(pickled, "mmseg", "refusing to load")
    backbone_only = tmp_path / "backbone.pth"
    torch.save(TimmBackbone("resnet18d").state_dict(), backbone_only)
    fails(backbone_only, "mmseg", "not a mmsegmentation checkpoint of a known family")
    fails(tmp_path / "absent.pth", "mmseg", "not found")
    with pytest.raises(UserError, match="unknown model zoo 'timm'"):
        convert_checkpoint(mmseg_file, "timm")


def test_cli_error_is_one_line_and_writes_nothing(mmseg_file: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out.safetensors"
    assert main(["convert", str(mmseg_file), "--from", "cirkd", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(mmseg_file) in err[0]
    assert not list(tmp_path.iterdir())


def test_renormalisation_gives_the_models_own_input() -> None:
    """A model section's ``input_mean``/``input_std``/``input_channels`` turn the pipeline's ImageNet
    RGB input into ``(pixel - mean) / std`` in the model's channel order (CIRKD's SegFormer recipe:
    BGR mean subtraction, no division)."""
    pixels = torch.randint(0, 256, (2, 3, 5, 7)).double()  # RGB 0-255
    imagenet_mean = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64).view(1, 3, 1, 1)
    imagenet_std = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64).view(1, 3, 1, 1)
    pipeline = (pixels / 255 - imagenet_mean) / imagenet_std
    mean, std = [104.00698793, 116.66876762, 122.67891434], [1.0, 1.0, 1.0]  # BGR order
    seen: list[torch.Tensor] = []
    probe = nn.Identity()
    probe.register_forward_hook(lambda module, args, out: seen.append(out))
    assert renormalise_input(probe, mean, std, "bgr")
    probe(pipeline)
    expected = pixels.flip(1) - torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)
    assert (seen[0] - expected).abs().max().item() < 1e-9
    rgb = InputRenormalisation([0.0, 0.0, 0.0], [255.0, 255.0, 255.0], "rgb")  # 0-1 RGB, no mean
    assert (rgb(probe, (pipeline,))[0] - pixels / 255).abs().max().item() < 1e-12
    assert not renormalise_input(nn.Identity(), [123.675, 116.28, 103.53], [58.395, 57.12, 57.375], "rgb")


def test_semseg_dilation_dilates_every_block() -> None:
    contracted = TimmBackbone("resnet50s").body
    semseg_style = TimmBackbone("resnet50s", contract_dilation=False).body
    assert (contracted.layer3[0].conv2.dilation, contracted.layer4[0].conv2.dilation) == ((1, 1), (2, 2))
    assert (semseg_style.layer3[0].conv2.dilation, semseg_style.layer4[0].conv2.dilation) == ((2, 2), (4, 4))
    assert semseg_style.layer3[0].conv2.padding == (2, 2) and semseg_style.layer4[1].conv2.dilation == (4, 4)
    with pytest.raises(UserError, match="applies to ResNet backbones"):
        TimmBackbone("mobilenetv2_100", contract_dilation=False)


# recipe -> (reference case, the section that takes the zoo weights)
ZOO_RECIPES = {
    "mmseg_pspnet_r101_teacher": ("mmseg-pspnet", "model"),
    "cirkd_deeplabv3_r101_teacher": ("cirkd-deeplabv3", "model"),
    "apd_pspnet_r101_teacher": ("apd-pspnet", "model"),
    "apd_mmseg_pspnet_r101": ("mmseg-pspnet", "teacher"),
    "apd_cirkd_deeplabv3_r101": ("cirkd-deeplabv3", "teacher"),
}


@pytest.mark.parametrize("recipe", sorted(ZOO_RECIPES))
def test_cityscapes_zoo_recipes_fit_their_checkpoints(recipe: str, tmp_path: Path) -> None:
    """Each recipe's model section is the one its zoo's R101 file needs: the file (keys and shapes of
    the real one, uninitialised values) loads through ``weights: <zoo>:PATH`` without a complaint."""
    case, key = ZOO_RECIPES[recipe]
    module, zoo, family, kwargs, classes = CASES[case]
    with torch.device("meta"):
        source = module.build(family, 101, classes, **kwargs)
    module.save_checkpoint(source.to_empty(device="cpu"), tmp_path / "zoo.pth")
    config = load_config(
        Path(__file__).resolve().parents[1] / "configs" / "cityscapes" / f"{recipe}.yaml",
        [f"{key}.weights={zoo}:{tmp_path / 'zoo.pth'}", "model.pretrained=false"],
    )
    section = getattr(config, key)
    assert section.weights.startswith(f"{zoo}:")
    model = build_model(section, key=key)
    assert sum(p.numel() for p in model.parameters()) > 40_000_000  # a ResNet-101 teacher
