"""The optimisation recipe: poly schedule, 10x head learning rate, where APD's adapters are trained."""

import pytest
import torch

from segdistill import Distiller, build_segmentor
from segdistill.distill import APDLoss, KDLoss
from segdistill.engine.trainer import poly_lr


def test_poly_schedule():
    assert poly_lr(0.01, 0, 100, 0.9) == pytest.approx(0.01)
    assert poly_lr(0.01, 50, 100, 0.9) == pytest.approx(0.01 * 0.5**0.9)
    assert poly_lr(0.01, 100, 100, 0.9) == 0.0


def test_param_groups_head_at_10x_and_adapters_split_between_optimizers():
    torch.manual_seed(0)
    student = build_segmentor("pspnet", "resnet18d", 5, head_channels=8, ppm_channels=4)
    teacher = build_segmentor("pspnet", "resnet18d", 5, head_channels=12, ppm_channels=4)
    apd = APDLoss(5, 8, 12, adapter_channels=6)
    taps = {"feat": "head.dropout", "logits": "head.classifier"}
    distiller = Distiller(student, teacher, taps, taps, {"apd": apd, "kd": KDLoss()})
    groups = {g["name"]: g for g in distiller.param_groups(0.01, 10.0)}
    assert groups["backbone"]["lr"] == 0.01 and groups["head"]["lr"] == pytest.approx(0.1)
    ids = {name: {id(p) for p in g["params"]} for name, g in groups.items()}
    assert ids["backbone"] == {id(p) for p in student.backbone.parameters()}
    assert {id(p) for p in student.head.parameters()} <= ids["head"]
    # the student adapter trains with the student at the head's rate; the teacher adapter does not
    assert groups["distill"]["lr"] == pytest.approx(0.1)
    assert ids["distill"] == {id(p) for p in apd.student_adapter.parameters()}
    ((term, module, optimizer, after_student),) = distiller.own_steps()
    assert not after_student
    assert term == "apd_teacher_ce" and module is apd.teacher_adapter
    assert isinstance(optimizer, torch.optim.Adam)
    assert optimizer.defaults["lr"] == 1e-5 and optimizer.defaults["betas"] == (0.9, 0.99)
    assert not any(p.requires_grad for p in teacher.parameters())
    all_student_side = set().union(*ids.values())
    assert not all_student_side & {id(p) for p in apd.teacher_adapter.parameters()}


def test_apd_method_is_the_release_recipe_and_methods_combine():
    from segdistill.config import load_config
    from segdistill.distill.methods import MethodContext, build_methods
    from segdistill.quickstart import recipe_path

    ctx = MethodContext(num_classes=19, student_channels={"feat": 64}, teacher_channels={"feat": 128})
    losses, weights = build_methods(["apd"], ctx, {}, {})
    assert set(losses) == {"apd", "kd"} and weights == {"apd": 10.0, "kd": 10.0}
    apd, kd = losses["apd"], losses["kd"]
    assert apd.scale == 10.0 and apd.scope == "batch" and apd.student_adapter is not None
    assert apd.student_adapter[0].out_channels == 512 and apd.teacher_adapter[-1].out_channels == 128
    assert kd.temperature == 1.0 and kd.reduction == "mean"
    # listing kd explicitly alongside apd builds one KD loss, with the explicit kd options
    losses, weights = build_methods(["apd", "kd"], ctx, {"kd": {"temperature": 2.0}}, {"kd": 3.0})
    assert set(losses) == {"apd", "kd"} and losses["kd"].temperature == 2.0 and weights["kd"] == 3.0
    config = load_config(recipe_path("synthetic/apd.yaml"))
    assert config.distill.methods == ["apd"] and config.teacher.weights == "shipped:synthetic_teacher"
    assert config.train.aux_weight == 0.4
