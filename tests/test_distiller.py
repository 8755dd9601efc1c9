"""The Distiller on our segmentors and on models nobody here wrote (torchvision, smp)."""

import pytest
import torch
from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large, lraspp_mobilenet_v3_large

from segdistill import Distiller, UserError, build_segmentor
from segdistill.distill import APDLoss, KDLoss, probe_channels
from segdistill.engine.task import train_step

K = 5


def make_distiller(student, teacher, s_taps, t_taps, size=(64, 64), **apd):
    s_ch = probe_channels(student, s_taps, size)["feat"]
    t_ch = probe_channels(teacher, t_taps, size)["feat"]
    losses = {"apd": APDLoss(K, s_ch, t_ch, adapter_channels=16, **apd), "kd": KDLoss(1.0)}
    return Distiller(student, teacher, s_taps, t_taps, losses, {"apd": 10.0, "kd": 10.0})


def run_steps(distiller, steps=2, size=(64, 64)):
    """Two SGD steps as the trainer runs them; returns the losses of the last step."""
    torch.manual_seed(0)
    opt = torch.optim.SGD([g for grp in distiller.param_groups(0.01, 10.0) for g in grp["params"]], lr=0.01)
    distiller.train()
    for _ in range(steps):
        images = torch.randn(2, 3, *size)
        targets = torch.randint(0, K, (2, *size))
        targets[:, :4] = 255
        out = distiller(images, targets)
        train_step(distiller, out, opt)
    return out


def assert_teacher_untouched(distiller, before):
    for name, p in distiller.teacher.named_parameters():
        assert p.grad is None, name
        assert torch.equal(p, before[name]), name
    assert not distiller.teacher.training


OURS = dict(feat="head.bottleneck", logits="head.classifier")


def test_ours_to_ours_with_different_widths():
    teacher = build_segmentor("pspnet", "resnet18d", K, head_channels=32)
    student = build_segmentor("pspnet", "mobilenetv2_100", K, head_channels=16)
    distiller = make_distiller(student, teacher, OURS, OURS)
    before = {n: p.detach().clone() for n, p in teacher.named_parameters()}
    adapter_before = [p.detach().clone() for p in distiller.losses["apd"].teacher_adapter.parameters()]
    student_before = [p.detach().clone() for p in student.parameters()]
    out = run_steps(distiller)
    assert set(out.losses) == {"ce", "aux_ce", "apd_kl", "apd_align", "kd"}
    assert set(out.own_losses) == {"apd_teacher_ce"}
    assert all(torch.isfinite(v) for v in out.losses.values())
    assert out.logits.shape == (2, K, 64, 64)
    assert_teacher_untouched(distiller, before)
    assert any(not torch.equal(a, p) for a, p in zip(student_before, student.parameters()))
    assert any(
        not torch.equal(a, p) for a, p in zip(adapter_before, distiller.losses["apd"].teacher_adapter.parameters())
    )


def test_torchvision_teacher_to_smp_student():
    smp = pytest.importorskip("segmentation_models_pytorch")
    teacher = deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=K)
    student = smp.Unet("resnet18", encoder_weights=None, classes=K, decoder_channels=(32, 16, 16, 8, 8))
    # torchvision: penultimate = classifier.3 (ReLU after the 3x3 conv, 256 ch at 1/8), logits = classifier.4
    # smp Unet: penultimate = decoder (8 ch at full size), logits = segmentation_head (full size)
    distiller = make_distiller(
        student,
        teacher,
        {"feat": "decoder", "logits": "segmentation_head"},
        {"feat": "classifier.3", "logits": "classifier.4"},
    )
    before = {n: p.detach().clone() for n, p in teacher.named_parameters()}
    out = run_steps(distiller)
    assert all(torch.isfinite(v) for v in out.losses.values()) and "aux_ce" not in out.losses
    assert_teacher_untouched(distiller, before)


def test_ours_teacher_to_torchvision_lraspp_student():
    teacher = build_segmentor("deeplabv3", "resnet18d", K, head_channels=24)
    student = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=K)
    # LR-ASPP: features = classifier.cbr (128 ch at 1/16), logits = the classifier's output (1/8)
    distiller = make_distiller(
        student, teacher, {"feat": "classifier.cbr", "logits": "classifier"}, OURS, scope="image"
    )
    before = {n: p.detach().clone() for n, p in teacher.named_parameters()}
    out = run_steps(distiller)
    assert all(torch.isfinite(v) for v in out.losses.values())
    assert_teacher_untouched(distiller, before)


def test_wrong_tap_name_lists_close_names():
    model = build_segmentor("pspnet", "mobilenetv2_100", K, head_channels=8)
    with pytest.raises(UserError, match=r"no module named 'head.botleneck' \(closest: head.bottleneck"):
        Distiller(model, model, {"feat": "head.botleneck"}, OURS, {})


def test_mismatched_channels_without_adapter_is_a_clear_error():
    teacher = build_segmentor("pspnet", "mobilenetv2_100", K, head_channels=16)
    student = build_segmentor("pspnet", "mobilenetv2_100", K, head_channels=8)
    with pytest.raises(UserError, match="equal feature channels"):
        APDLoss(K, 8, 16, adapter=False)
    wrong = APDLoss(K, 8, 8, adapter=False)  # built for 8, the teacher gives 16
    distiller = Distiller(student, teacher, OURS, OURS, {"apd": wrong})
    with pytest.raises(UserError, match="teacher feature channels"):
        distiller(torch.randn(2, 3, 32, 32), torch.zeros(2, 32, 32, dtype=torch.long))


def test_loss_reading_an_undefined_tap_and_unknown_weights():
    model = build_segmentor("pspnet", "mobilenetv2_100", K, head_channels=8)
    with pytest.raises(UserError, match="reads tap 'logits'"):
        Distiller(model, model, {"feat": "head.bottleneck"}, {"feat": "head.bottleneck"}, {"kd": KDLoss()})
    with pytest.raises(UserError, match="weight 'cwd' names no loss"):
        Distiller(model, model, OURS, OURS, {"kd": KDLoss()}, {"cwd": 1.0})


def test_kd_reductions():
    torch.manual_seed(0)
    s, t = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    target = torch.zeros(2, 3, 3, dtype=torch.long)
    ref = torch.nn.KLDivLoss(reduction="mean")(s.log_softmax(1), t.softmax(1))
    assert KDLoss(1.0)(s, t, target)["kd"].item() == pytest.approx(ref.item(), rel=1e-5)
    per_pixel = (t.softmax(1) * (t.log_softmax(1) - s.log_softmax(1))).sum(1).mean()
    assert KDLoss(1.0, reduction="pixel")(s, t, target)["kd"].item() == pytest.approx(per_pixel.item(), rel=1e-5)
    ref4 = torch.nn.KLDivLoss(reduction="mean")((s / 4).log_softmax(1), (t / 4).softmax(1)) * 16
    assert KDLoss(4.0)(s, t, target)["kd"].item() == pytest.approx(ref4.item(), rel=1e-5)
