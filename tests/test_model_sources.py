"""Models from other libraries (torchvision, smp, transformers, the user's own code) as teacher or
student, named in a config and used as the library builds them: training, distillation, evaluation,
export, exact resume, default taps, output normalisation, and one-line errors for bad input.

Tiny random-initialised models throughout; the transformers folder is written by ``save_pretrained``
into ``tmp_path`` (no network)."""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from segdistill.base.step import segmentation_losses, split_param_groups
from segdistill.cli import main
from segdistill.config import ModelConfig, load_config
from segdistill.distill.taps import TapRecorder
from segdistill.engine.builders import build_model
from segdistill.engine.inference import predict
from segdistill.errors import UserError
from segdistill.models.sources import default_taps

transformers = pytest.importorskip("transformers")
pytest.importorskip("segmentation_models_pytorch")

# A two-stage SegFormer with 8/16 hidden channels: logits at 1/4 of the input, like the real ones.
SEGFORMER = {
    "num_encoder_blocks": 2,
    "depths": [1, 1],
    "sr_ratios": [2, 1],
    "hidden_sizes": [8, 16],
    "num_attention_heads": [1, 1],
    "decoder_hidden_size": 16,
    "strides": [4, 2],
    "patch_sizes": [7, 3],
}
TINY_UNET = {"encoder_name": "resnet18", "encoder_depth": 3, "decoder_channels": [16, 8, 8]}
USER_MODULE = '''
from torch import nn


class TinyNet(nn.Module):
    """A user's own model: logits at 1/4 of the input, no dict, no aux."""

    def __init__(self, num_classes, width=8):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, 2, 1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, 2, 1), nn.BatchNorm2d(width), nn.ReLU(),
        )
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, x):
        return self.classifier(self.body(x))


def build(num_classes, width=8):
    return TinyNet(num_classes, width)


def image_classifier(num_classes):
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))
'''


def _yaml_map(values: dict) -> str:
    return json.dumps(values)  # JSON is YAML


@pytest.fixture
def user_module(tmp_path, monkeypatch) -> str:
    """``segdistill_user_models`` importable (a file in tmp_path on sys.path)."""
    (tmp_path / "segdistill_user_models.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("segdistill_user_models", None)
    return "segdistill_user_models"


@pytest.fixture
def hf_folder(tmp_path) -> Path:
    """A tiny SegFormer with 19 labels written by ``save_pretrained``."""
    torch.manual_seed(0)
    config = transformers.SegformerConfig(num_labels=19, **SEGFORMER)
    folder = tmp_path / "segformer_tiny"
    transformers.SegformerForSemanticSegmentation(config).save_pretrained(folder)
    return folder


def source_keys(side: str, source: str, user_module: str, hf_folder: Path) -> list[str]:
    """Overrides that make ``side`` (model or teacher) a tiny model of ``source``."""
    keys = {
        "segdistill": [
            f"{side}.backbone=mobilenetv2_100",
            f"{side}.backbone_kwargs={{}}",
            f"{side}.head_channels=16",
            f"{side}.ppm_channels=8",
        ],
        "torchvision": [f"{side}.source=torchvision", f"{side}.arch=lraspp_mobilenet_v3_large"],
        "smp": [
            f"{side}.source=smp",
            f"{side}.arch=Unet",
            f"{side}.kwargs={_yaml_map(TINY_UNET)}",
        ],
        "hf": [
            f"{side}.source=hf",
            f"{side}.arch=SegformerForSemanticSegmentation",
            f"{side}.kwargs={_yaml_map(SEGFORMER)}",
        ],
        "hf-folder": [f"{side}.source=hf", f"{side}.pretrained={hf_folder}"],
        "python": [f"{side}.source=python", f"{side}.arch={user_module}:build"],
    }
    return keys[source]


def common(tiny_data: Path, tmp_path: Path) -> list[str]:
    return [
        f"data.root={tiny_data}",
        f"out_dir={tmp_path / 'runs'}",
        "data.crop_size=[64,64]",
        "data.batch_size=4",
        "train.iters=4",
        "train.log_interval=2",
        "train.checkpoint_interval=2",
        "train.amp=none",
        "train.channels_last=false",
        "eval.batch_size=4",
    ]


# Each source is a teacher once and a student once, and every pair crosses libraries.
PAIRS = [
    ("segdistill", "torchvision"),
    ("torchvision", "hf"),
    ("hf", "smp"),
    ("smp", "python"),
    ("hf-folder", "segdistill"),
    ("python", "hf-folder"),
]


@pytest.mark.slow
@pytest.mark.parametrize("teacher_source, student_source", PAIRS, ids=[f"{t}->{s}" for t, s in PAIRS])
def test_any_source_distils_into_any_other_and_evaluates_exports_resumes(
    teacher_source, student_source, tiny_data, tmp_path, user_module, hf_folder
):
    """Through the CLI: a teacher of one library trained, a student of another distilled with APD, a
    logit method (CWD) and a feature method (FitNets), evaluated with the sliding window at two scales
    with flip, exported to safetensors under the library's own keys, and an interrupted run resumed
    to the same weights bitwise."""
    base = common(tiny_data, tmp_path)
    teacher_keys = source_keys("model", teacher_source, user_module, hf_folder)
    if teacher_source == "hf-folder":
        teacher_weights = []  # the folder holds the trained weights
    else:
        assert main(["train", "configs/synthetic/student.yaml", *base, *teacher_keys, "name=teacher"]) == 0
        teacher_weights = [f"teacher.weights={tmp_path / 'runs/teacher/checkpoints/last.pt'}"]
    distill = [
        "distill.methods=[apd,cwd,fitnet]",
        "distill.weights={}",
        "distill.options={}",
        *source_keys("teacher", teacher_source, user_module, hf_folder),
        *teacher_weights,
        *source_keys("model", student_source, user_module, hf_folder),
    ]
    assert main(["distill", "configs/synthetic/apd.yaml", *base, *distill, "name=student"]) == 0
    run = tmp_path / "runs/student"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in records if "loss" in r]
    for term in ("ce", "apd_kl", "apd_align", "kd", "cwd", "fitnet"):
        assert all(torch.isfinite(torch.tensor(r[term])) for r in trained), term
    final = torch.load(run / "checkpoints/last.pt", weights_only=True)

    # interrupted after step 2 (its checkpoint restored as the newest), resumed: the same weights
    shutil.copy(run / "checkpoints/last.previous.pt", run / "checkpoints/last.pt")
    (run / "summary.json").unlink()
    assert main(["distill", "configs/synthetic/apd.yaml", *base, *distill, "name=student", "--resume"]) == 0
    resumed = torch.load(run / "checkpoints/last.pt", weights_only=True)
    assert resumed["step"] == final["step"] == 4
    for key, value in final["model"].items():
        assert torch.equal(value, resumed["model"][key]), key

    metrics_json = tmp_path / "eval.json"
    args = ["--checkpoint", str(run / "checkpoints/last.pt"), "--mode", "slide", "--scales", "0.75", "1.0", "--flip"]
    assert main(["eval", str(run / "config.yaml"), *args, "--json", str(metrics_json)]) == 0
    assert 0.0 <= json.loads(metrics_json.read_text())["mIoU"] <= 1.0

    exported = tmp_path / "student.safetensors"
    assert main(["export", str(run / "checkpoints/last.pt"), "--safetensors", str(exported)]) == 0
    assert set(load_file(exported)) == set(final["model"])  # the library's own state-dict keys


@pytest.mark.slow
def test_an_external_student_on_the_shipped_recipe_benches_with_figures(tiny_data, tmp_path):
    """``segdistill bench`` on the torchvision LR-ASPP recipe: baseline and APD, results and every
    figure (t-SNE reads each model's own default feature tap)."""
    pytest.importorskip("sklearn")
    overrides = [o for o in common(tiny_data, tmp_path) if not o.startswith("out_dir")]
    out = tmp_path / "bench"
    args = ["bench", "configs/synthetic/lraspp/apd.yaml", "--methods", "baseline", "apd", "--seeds", "0"]
    assert main([*args, "--out", str(out), *overrides, "train.iters=2"]) == 0
    for name in ("results.md", "curves.png", "per_class.png", "predictions.png", "tsne.png"):
        assert (out / name).is_file(), name


@pytest.mark.slow
def test_an_external_student_exports_to_onnx_at_the_input_size(tiny_data, tmp_path):
    """A transformers SegFormer (logits at 1/4) exported to ONNX gives logits at the input size, equal
    to PyTorch's upsampled logits."""
    pytest.importorskip("onnxruntime")
    base = common(tiny_data, tmp_path)
    keys = source_keys("model", "hf", "", Path())
    assert main(["train", "configs/synthetic/student.yaml", *base, *keys, "name=hf", "train.iters=1"]) == 0
    out = tmp_path / "hf.onnx"
    checkpoint = str(tmp_path / "runs/hf/checkpoints/last.pt")
    assert main(["export", checkpoint, "--onnx", str(out), "--size", "64", "96"]) == 0
    import onnxruntime

    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    image = torch.randn(1, 3, 64, 96)
    (logits,) = session.run(None, {"image": image.numpy()})
    assert logits.shape == (1, 19, 64, 96)


def test_profile_predict_and_taps_take_any_source(tiny_data, tmp_path, user_module, capsys):
    base = common(tiny_data, tmp_path)
    keys = source_keys("model", "python", user_module, Path())
    assert main(["profile", "configs/synthetic/student.yaml", *base, *keys, "--runs", "1"]) == 0
    assert main(["train", "configs/synthetic/student.yaml", *base, *keys, "name=user", "train.iters=1"]) == 0
    image = next((tiny_data / "leftImg8bit" / "val").rglob("*.png"))
    out = tmp_path / "pred"
    assert main(["predict", str(tmp_path / "runs/user/checkpoints/last.pt"), str(image), "--out", str(out)]) == 0
    assert len(list(out.glob("*_mask.png"))) == 1
    report = tmp_path / "taps.json"
    teacher = source_keys("teacher", "hf", "", Path())
    capsys.readouterr()
    args = ["taps", "configs/synthetic/apd.yaml", *base, *keys, *teacher, "--json", str(report), "--width", "200"]
    assert main(args) == 0
    printed = capsys.readouterr().out + capsys.readouterr().err
    taps = json.loads(report.read_text())
    assert taps["student"]["taps"] == {"feat": "classifier:input", "logits": "classifier"}
    assert taps["teacher"]["taps"] == {"feat": "decode_head.classifier:input", "logits": "decode_head.classifier"}
    rows = {m["name"]: m for m in taps["teacher"]["modules"]}
    assert rows["decode_head.classifier"]["output"] == [1, 19, 16, 16]  # SegFormer: 1/4 of 64
    assert "decode_head.classifier" in printed


# ----------------------------------------------------------------------------------------------------
# default taps, output normalisation, parameter groups


def _model(**values) -> torch.nn.Module:
    from segdistill.base.schema import build_section

    return build_model(build_section(ModelConfig, {"num_classes": 5, **values}, "model."))


def test_default_taps_per_family():
    cases = {
        "deeplabv3": (
            {"source": "torchvision", "arch": "deeplabv3_mobilenet_v3_large", "kwargs": {"aux_loss": True}},
            {"feat": "classifier.4:input", "logits": "classifier.4", "aux_logits": "aux_classifier.4"},
        ),
        "fcn": (
            {"source": "torchvision", "arch": "fcn_resnet50", "kwargs": {"aux_loss": False}},
            {"feat": "classifier.4:input", "logits": "classifier.4"},
        ),
        "lraspp": (
            {"source": "torchvision", "arch": "lraspp_mobilenet_v3_large"},
            {"feat": "classifier.high_classifier:input", "logits": "classifier"},
        ),
        "smp": (
            {"source": "smp", "arch": "FPN", "kwargs": {"encoder_name": "resnet18"}},
            {"feat": "segmentation_head.0:input", "logits": "segmentation_head.0"},
        ),
        "segformer": (
            {"source": "hf", "arch": "SegformerForSemanticSegmentation", "kwargs": SEGFORMER},
            {"feat": "decode_head.classifier:input", "logits": "decode_head.classifier"},
        ),
    }
    for name, (values, expected) in cases.items():
        assert default_taps(_model(**values), 5) == expected, name


def test_upernet_auxiliary_classifier_is_the_aux_tap():
    backbone = {"model_type": "convnext", "hidden_sizes": [8, 16, 32, 64], "depths": [1, 1, 1, 1],
                "out_features": ["stage1", "stage2", "stage3", "stage4"]}  # fmt: skip
    kwargs = {"backbone_config": backbone, "hidden_size": 16, "auxiliary_in_channels": 32, "auxiliary_channels": 8}
    model = _model(source="hf", arch="UperNetForSemanticSegmentation", kwargs=kwargs)
    taps = default_taps(model, 5)
    assert taps == {
        "feat": "decode_head.classifier:input",
        "logits": "decode_head.classifier",
        "aux_logits": "auxiliary_head.classifier",
    }


def test_an_input_tap_captures_what_the_module_reads():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))
    recorder = TapRecorder(model, {"feat": "2:input", "relu": "1"})
    x = torch.randn(2, 3, 8, 8)
    model(x)
    maps = recorder.collect()
    assert torch.equal(maps["feat"], maps["relu"])
    assert torch.equal(maps["feat"], torch.relu(model[0](x)))


def test_coarse_logits_are_upsampled_as_the_library_does():
    """SegFormer's logits are at 1/4: the loss is the cross-entropy of the bilinearly upsampled
    logits, and the predicted map equals transformers' own post-processing."""
    torch.manual_seed(0)
    model = _model(source="hf", arch="SegformerForSemanticSegmentation", kwargs=SEGFORMER).eval()
    images = torch.randn(2, 3, 64, 96)
    labels = torch.randint(0, 5, (2, 64, 96))
    with torch.no_grad():
        output = model(images)
        assert output.logits.shape[-2:] == (16, 24)
        expected = F.cross_entropy(
            F.interpolate(output.logits, size=(64, 96), mode="bilinear", align_corners=False), labels, ignore_index=255
        )
        assert torch.allclose(segmentation_losses(output, labels, 0.4)["ce"], expected, rtol=0, atol=1e-6)
        ours = predict(model, images).argmax(dim=1)
    processor = transformers.SegformerImageProcessor()
    theirs = processor.post_process_semantic_segmentation(output, target_sizes=[(64, 96)] * 2)
    assert torch.equal(ours, torch.stack(theirs))


def test_parameter_groups_put_the_library_backbone_at_the_base_rate(user_module):
    model = _model(source="hf", arch="SegformerForSemanticSegmentation", kwargs=SEGFORMER)
    groups = {g["name"]: g for g in split_param_groups(model, 0.01, 10.0)}
    backbone_ids = {id(p) for p in model.segformer.parameters()}
    assert {id(p) for p in groups["backbone"]["params"]} == backbone_ids
    assert groups["head"]["lr"] == pytest.approx(0.1)
    # a model with no known backbone trains wholly at the base rate
    user = _model(source="python", arch=f"{user_module}:build")
    assert [g["name"] for g in split_param_groups(user, 0.01, 10.0)] == ["backbone"]


def test_a_recipe_switching_source_starts_the_model_section_afresh(tmp_path):
    """The synthetic student sets PSPNet keys; a recipe basing on it with another source does not
    inherit them (and keeps num_classes); overrides switch source in any order."""
    child = tmp_path / "child.yaml"
    base = Path("configs/synthetic/student.yaml").resolve()
    child.write_text(f"base: {base}\nmodel: {{source: torchvision, arch: lraspp_mobilenet_v3_large}}\n")
    config = load_config(child)
    assert config.model.head_channels is None and config.model.num_classes == 19
    config = load_config(base, ["model.arch=fcn_resnet50", "model.source=torchvision"])
    assert (config.model.source, config.model.arch, config.model.backbone_kwargs) == ("torchvision", "fcn_resnet50", {})


# ----------------------------------------------------------------------------------------------------
# bad input: one line naming the key, exit 2


BAD = {
    "unknown source": (["model.source=keras"], "model.source"),
    "unknown builder": (["model.source=torchvision", "model.arch=deeplabv3_resnet5"], "deeplabv3_resnet50"),
    "unknown keyword": (
        ["model.source=torchvision", "model.arch=fcn_resnet50", "model.kwargs={colour: 1}"],
        "model.kwargs.colour",
    ),
    "unknown smp architecture": (["model.source=smp", "model.arch=Unett"], "'Unet'"),
    "unknown hf class": (
        ["model.source=hf", "model.arch=SegformerForSegmentation"],
        "SegformerForSemanticSegmentation",
    ),
    "unknown hf config key": (
        ["model.source=hf", "model.arch=SegformerForSemanticSegmentation", "model.kwargs={hiden_sizes: [8]}"],
        "model.kwargs.hiden_sizes",
    ),
    "missing hf folder": (["model.source=hf", "model.pretrained=./no/such/folder"], "model.pretrained"),
    "python target without callable": (["model.source=python", "model.arch=segdistill_user_models"], "model.arch"),
    "python module missing": (["model.source=python", "model.arch=no_such_module_xyz:build"], "no_such_module_xyz"),
    "arch missing": (["model.source=smp"], "model.arch"),
    "segdistill key with another source": (
        ["model.source=torchvision", "model.arch=fcn_resnet50", "model.head_channels=8"],
        "'model.head_channels'",
    ),
    "output not per-pixel": (
        ["model.source=python", "model.arch=segdistill_user_models:image_classifier"],
        "per-pixel",
    ),
    "wrong class count": (
        ["model.source=torchvision", "model.arch=lraspp_mobilenet_v3_large", "model.kwargs={num_classes: 21}"],
        "model.num_classes=19",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_model_sections_are_one_line(case, tiny_data, tmp_path, user_module, capsys):
    overrides, needle = BAD[case]
    code = main(["train", "configs/synthetic/student.yaml", *common(tiny_data, tmp_path), *overrides])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert needle in err[0], err[0]


def test_a_tap_the_model_lacks_is_named(tiny_data, tmp_path, user_module, capsys):
    overrides = [*common(tiny_data, tmp_path), *source_keys("model", "python", user_module, Path())]
    overrides.append("distill.student_taps={feat: 'body.9:input', logits: classifier}")
    code = main(["distill", "configs/synthetic/apd.yaml", *overrides])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "'body.9'" in err[0], err


def test_a_missing_library_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    with pytest.raises(UserError, match=r"segdistill\[hf\]"):
        _model(source="hf", arch="SegformerForSemanticSegmentation")


@pytest.mark.slow
def test_two_processes_train_an_external_model_with_an_unused_head(tiny_data, tmp_path):
    """torchrun-style, 2 gloo processes: an smp Unet with a classification head (``aux_params``) that
    no loss reads trains and evaluates (DDP finds the parameters without gradients)."""
    from test_distributed import launch

    kwargs = {**TINY_UNET, "aux_params": {"classes": 19}}
    args = [
        "train",
        "configs/synthetic/student.yaml",
        *[o for o in common(tiny_data, tmp_path) if not o.startswith("data.batch_size")],
        "data.batch_size=2",
        "model.source=smp",
        "model.arch=Unet",
        f"model.kwargs={_yaml_map(kwargs)}",
        "name=ddp_smp",
    ]
    procs = launch(2, args)
    for p in procs:
        p.wait(timeout=300)
    errors = [p.stderr.read() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    assert (tmp_path / "runs/ddp_smp/summary.json").is_file()


def test_a_trained_library_model_evaluates_without_a_checkpoint(tiny_data, tmp_path, hf_folder, capsys):
    """A model-zoo model evaluated as it is: a transformers folder needs no segdistill checkpoint; a
    model without trained weights does."""
    out = tmp_path / "eval.json"
    keys = [*common(tiny_data, tmp_path), "model.source=hf", f"model.pretrained={hf_folder}"]
    assert main(["eval", "configs/synthetic/student.yaml", *keys, "--json", str(out)]) == 0
    assert 0.0 <= json.loads(out.read_text())["mIoU"] <= 1.0
    capsys.readouterr()
    assert main(["eval", "configs/synthetic/student.yaml", *common(tiny_data, tmp_path)]) == 2
    assert "eval needs --checkpoint" in capsys.readouterr().err
