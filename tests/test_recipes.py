"""Every shipped recipe loads, builds its Distiller, and (on the embedded default) trains."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from segdistill.base.method_options import METHOD_NAMES
from segdistill.config import load_config
from segdistill.engine.builders import build_model
from segdistill.engine.run import build_distiller
from segdistill.engine.task import train_step

ROOT = Path(__file__).resolve().parents[1]
SYNTHETIC_METHODS = list(METHOD_NAMES)  # every method ships a recipe for the embedded default


@pytest.mark.parametrize("name", SYNTHETIC_METHODS + ["pspnet_r18_student", "pspnet_r101_teacher"])
def test_cityscapes_recipes_load(name):
    """The Cityscapes recipes follow the APD release's schedule and protocol."""
    cfg = load_config(ROOT / f"configs/cityscapes/{name}.yaml")
    assert cfg.data.dataset == "cityscapes" and cfg.data.crop_size == [713, 713] and cfg.data.batch_size == 8
    assert cfg.train.iters == 74375 and cfg.train.lr == 0.005 and cfg.train.head_lr_mult == 10.0
    assert cfg.eval.mode == "slide" and cfg.eval.flip
    if name in SYNTHETIC_METHODS:
        assert cfg.distill.methods == [name] and cfg.teacher.backbone == "resnet101d"
        assert cfg.model.backbone == "resnet18d"


@pytest.mark.parametrize("name", ["dist", "cirkd"])
def test_cityscapes_distillers_build(name):
    """R101 -> R18 at the release's widths: channels probed, DIST reads both models' auxiliary logits,
    CIRKD's queues at the reference sizes (K x 20000 x 512 pixel slots)."""
    overrides = ["model.pretrained=false", "data.crop_size=[64,64]", "teacher.weights=null"]
    cfg = load_config(ROOT / f"configs/cityscapes/{name}.yaml", overrides)
    student, teacher = build_model(cfg.model), build_model(cfg.teacher, cfg.model.num_classes)
    distiller = build_distiller(cfg, student, teacher, torch.device("cpu"))
    if name == "dist":
        assert distiller.losses["dist"].taps == ("logits", "aux_logits")
        distiller.train()
        out = distiller(torch.randn(2, 3, 64, 64), torch.randint(0, 19, (2, 64, 64)))
        assert torch.isfinite(out.losses["dist"])
    else:
        assert distiller.losses["cirkd_mem"].pixel_queue.shape == (19, 20000, 512)


TINY = [
    "model.backbone=mobilenetv2_100",
    "model.backbone_kwargs={}",
    "model.head_channels=16",
    "model.ppm_channels=8",
    "teacher.backbone=mobilenetv2_100",
    "teacher.head_channels=24",
    "teacher.ppm_channels=8",
    "teacher.weights=null",
    "data.crop_size=[64,64]",
]
# 64 x 64 crops give an 8 x 8 grid: Af-DCD's 4 x 4 windows need pooling by 2, not 4
TINY_EXTRA = {"afdcd": ["distill.options.afdcd.pool=2"]}
EXPECTED_TERMS = {
    "kd": {"kd"},
    "fitnet": {"fitnet", "kd"},
    "at": {"at", "kd"},
    "skd": {"skd_pa", "kd", "adv"},
    "ifvd": {"ifvd", "kd", "adv"},
    "cwd": {"cwd"},
    "dist": {"dist"},
    "cirkd": {"kd", "cirkd_mb", "cirkd_pix", "cirkd_reg"},
    "dkd": {"dkd_tckd", "dkd_nckd"},
    "mgd": {"mgd", "cwd"},
    "afdcd": {"afdcd_fd", "afdcd_ctr", "kd"},
    "bpkd": {"bpkd_edge", "bpkd_body"},
    "maskd": {"maskd"},
    "apd": {"kd", "apd_kl", "apd_align"},
}


@pytest.mark.parametrize("method", SYNTHETIC_METHODS)
def test_every_synthetic_recipe_builds_and_steps(method, tmp_path):
    """Each embedded-default recipe builds its Distiller (on tiny models) and takes two training steps
    as the trainer does: finite terms, the recipe's terms present, own-optimizer modules stepped."""
    extra = TINY_EXTRA.get(method, [])
    if method == "maskd":  # stage 2 reads the tokens stage 1 learned: random ones here (the values do not matter)
        torch.save({"mask_token": torch.randn(8, 19) * 0.01}, tmp_path / "tokens.pt")
        extra = [f"distill.options.maskd.tokens={tmp_path / 'tokens.pt'}"]
    cfg = load_config(ROOT / f"configs/synthetic/{method}.yaml", TINY + extra)
    torch.manual_seed(0)
    student, teacher = build_model(cfg.model), build_model(cfg.teacher, cfg.model.num_classes)
    distiller = build_distiller(cfg, student, teacher, torch.device("cpu"))
    groups = distiller.param_groups(0.01, 10.0)
    opt = torch.optim.SGD([p for g in groups for p in g["params"]], lr=0.01, momentum=0.9)
    teacher_before = [p.detach().clone() for p in teacher.parameters()]
    own_before = {s.term: [p.detach().clone() for p in s.module.parameters()] for s in distiller.own_steps()}
    distiller.train()
    for _ in range(2):
        images, labels = torch.randn(2, 3, 64, 64), torch.randint(0, 19, (2, 64, 64))
        labels[:, :8] = 255
        out = distiller(images, labels)
        train_step(distiller, out, opt)
    assert EXPECTED_TERMS[method] <= set(out.losses), set(out.losses)
    assert all(torch.isfinite(v) for v in out.losses.values())
    assert all(torch.equal(a, b) for a, b in zip(teacher_before, teacher.parameters()))
    for step in distiller.own_steps():
        assert any(not torch.equal(a, b) for a, b in zip(own_before[step.term], step.module.parameters())), step.term


def test_methods_combine_with_per_method_weights():
    """``methods: [apd, cwd]`` brings both methods' terms; config weights override the defaults; a KD
    that two methods bring is built once, the first listed method's (an explicit ``kd`` first)."""
    from segdistill.distill import CWDLoss, KDLoss
    from segdistill.distill.methods import MethodContext, build_methods

    ctx = MethodContext(19, {"feat": 16, "logits": 19}, {"feat": 32, "logits": 19})
    losses, weights = build_methods(["apd", "cwd"], ctx, {"cwd": {"temperature": 2.0}}, {"cwd": 1.5})
    assert set(losses) == {"apd", "kd", "cwd"}
    assert weights == {"apd": 10.0, "kd": 10.0, "cwd": 1.5, "cwd_feat": 50.0}
    assert isinstance(losses["cwd"], CWDLoss) and losses["cwd"].temperature == 2.0
    losses, weights = build_methods(["apd", "fitnet"], ctx, {}, {})
    assert losses["kd"].reduction == "mean" and losses["kd"].upsample and weights["kd"] == 10.0  # APD's KD
    losses, weights = build_methods(["fitnet", "apd"], ctx, {}, {})
    assert losses["kd"].reduction == "pixel" and not losses["kd"].upsample and weights["kd"] == 1.0
    losses, _ = build_methods(["apd", "kd"], ctx, {"kd": {"temperature": 4.0}}, {})
    assert isinstance(losses["kd"], KDLoss) and losses["kd"].temperature == 4.0  # explicit kd wins


RELEASE = {  # the APD release's recipe per dataset: classes, batch, iterations, backbone lr
    "ade20k": (150, 8, 252625, 0.005),
    "pascal_context": (60, 12, 41650, 0.00075),
}


@pytest.mark.parametrize("dataset", list(RELEASE))
@pytest.mark.parametrize("name", ["pspnet_r101_teacher", "pspnet_r18_student", "apd"])
def test_ade20k_and_context_recipes(dataset, name):
    """Crop 473, the release's batch, epochs and lr, and its test protocol (long side 512, slide, flip);
    the APD distiller builds for the dataset's class count."""
    classes, batch, iters, lr = RELEASE[dataset]
    cfg = load_config(ROOT / f"configs/{dataset}/{name}.yaml")
    assert cfg.data.dataset == dataset and cfg.data.crop_size == [473, 473] and cfg.data.batch_size == batch
    assert cfg.model.num_classes == classes and cfg.train.iters == iters and cfg.train.lr == lr
    assert cfg.eval.base_size == 512 and cfg.eval.mode == "slide" and cfg.eval.stride == [316, 316] and cfg.eval.flip
    if name == "apd":
        overrides = ["model.pretrained=false", "data.crop_size=[64,64]", "teacher.weights=null"]
        cfg = load_config(ROOT / f"configs/{dataset}/{name}.yaml", overrides)
        assert cfg.teacher.num_classes == classes
        student, teacher = build_model(cfg.model), build_model(cfg.teacher)
        distiller = build_distiller(cfg, student, teacher, torch.device("cpu")).train()
        out = distiller(torch.randn(2, 3, 64, 64), torch.randint(0, classes, (2, 64, 64)))
        assert out.logits.shape[1] == classes and torch.isfinite(out.total)


@pytest.mark.parametrize("name", ["apd_deeplabv3_r18", "apd_pspnet_mbv2", "apd_pspnet_effb0"])
def test_other_cityscapes_students_distil_with_apd(name):
    """DeepLabV3 and MobileNetV2 / EfficientNet students from the R101 teacher: the default taps fit
    every head and APD trains a step."""
    overrides = ["model.pretrained=false", "data.crop_size=[64,64]", "teacher.weights=null"]
    cfg = load_config(ROOT / f"configs/cityscapes/{name}.yaml", overrides)
    assert cfg.train.iters == 74375 and cfg.distill.methods == ["apd"] and cfg.teacher.backbone == "resnet101d"
    student, teacher = build_model(cfg.model), build_model(cfg.teacher)
    distiller = build_distiller(cfg, student, teacher, torch.device("cpu")).train()
    out = distiller(torch.randn(2, 3, 64, 64), torch.randint(0, 19, (2, 64, 64)))
    assert {"apd_kl", "apd_align", "kd"} <= set(out.losses) and torch.isfinite(out.total)
    out.total.backward()
    assert all(p.grad is None for p in teacher.parameters())


def test_afdcd_clips_its_modules_gradients_in_the_trainer(tiny_overrides, monkeypatch):
    """Af-DCD's release clips its loss module's gradient norm to 15 between backward and the step: the
    trainer does so for a loss with ``max_grad_norm`` (after unscaling), and only then."""
    from segdistill.cli import main
    from segdistill.distill import Distiller

    norms: list[float] = []
    original = Distiller.clip_gradients

    def recording(self) -> None:
        original(self)
        grads = [p.grad for p in self.losses["afdcd"].parameters() if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))

    monkeypatch.setattr(Distiller, "clip_gradients", recording)
    extra = ["distill.options.afdcd.pool=2", "distill.weights.afdcd_ctr=1.0e+4", "distill.weights.afdcd_fd=1.0"]
    assert main(["distill", "configs/synthetic/afdcd.yaml", *tiny_overrides, *extra, "name=afdcd"]) == 0
    assert len(norms) == 4 and max(norms) <= 15.0 + 1e-3  # one clip per step (train.iters=4)
    norms.clear()
    assert main(["distill", "configs/synthetic/cwd.yaml", *tiny_overrides, "name=cwd"]) == 0
    assert norms == []  # no loss clips: the step is as before


def test_a_loss_two_methods_bring_keeps_the_options_the_config_sets():
    """MGD brings CWD (T 4): an explicit ``cwd`` with its own options replaces it, whatever the order; options
    of a method whose copy would be dropped (APD's ``kd_temperature`` next to an explicit ``kd``) are refused
    in one line instead of being ignored; without options the first listed method's copy stays (as before)."""
    from segdistill.distill.methods import MethodContext, build_methods
    from segdistill.errors import UserError

    ctx = MethodContext(19, {"feat": 16, "logits": 19}, {"feat": 32, "logits": 19})
    for names in (["mgd", "cwd"], ["cwd", "mgd"]):
        losses, weights = build_methods(names, ctx, {"cwd": {"temperature": 1.0}}, {})
        assert losses["cwd"].temperature == 1.0 and list(losses) == names and weights["cwd"] == 3.0
    with pytest.raises(UserError, match=r"distill.options.apd gives it .*'temperature': 2.0.* would be dropped"):
        build_methods(["kd", "apd"], ctx, {"apd": {"kd_temperature": 2.0}}, {})
    losses, _ = build_methods(["kd", "apd"], ctx, {"apd": {"kd_temperature": 1.0}}, {})  # the same KD: fine
    assert losses["kd"].temperature == 1.0


def test_a_tap_no_model_defines_is_one_line():
    """A method reading a tap that the config's taps leave out: a UserError naming the side and the key."""
    from segdistill.distill.methods import MethodContext, build_methods
    from segdistill.errors import UserError

    ctx = MethodContext(19, {"logits": 19}, {"feat": 32, "logits": 19})
    with pytest.raises(UserError, match=r"student's 'feat' tap, which is not defined \(defined: logits\); set "):
        build_methods(["mgd"], ctx, {}, {})
