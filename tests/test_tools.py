"""``segdistill profile`` and ``segdistill predict``."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from segdistill.cli import main


def test_profile_teacher_and_student(tiny_overrides, tmp_path):
    out = tmp_path / "profile.json"
    teacher = ["teacher.backbone=mobilenetv2_100", "teacher.backbone_kwargs={}", "teacher.head_channels=32"]
    teacher += ["teacher.ppm_channels=8", "teacher.weights=null"]
    assert (
        main(["profile", "configs/synthetic/apd.yaml", *tiny_overrides, *teacher, "--runs", "2", "--json", str(out)])
        == 0
    )
    rows = json.loads(out.read_text())
    assert set(rows) == {"teacher", "student"}
    assert rows["teacher"]["parameters"] > rows["student"]["parameters"] > 0
    assert rows["teacher"]["flops"] > rows["student"]["flops"] > 0 and rows["student"]["cpu_ms"] > 0


def test_predict_writes_masks_and_overlays_with_the_palette(tiny_overrides, tiny_data, tmp_path):
    from segdistill.data.labels import PALETTE

    assert main(["train", "configs/synthetic/student.yaml", *tiny_overrides, "name=m"]) == 0
    images = sorted((tiny_data / "leftImg8bit" / "val").rglob("*.png"))[:2]
    out = tmp_path / "pred"
    ckpt = tmp_path / "runs/m/checkpoints/last.pt"
    assert main(["predict", str(ckpt), *map(str, images), "--out", str(out)]) == 0
    for image in images:
        mask = np.array(Image.open(out / f"{image.stem}_mask.png"))
        overlay = np.array(Image.open(out / f"{image.stem}_overlay.png"))
        assert mask.shape == overlay.shape == np.array(Image.open(image)).shape
        colours = {tuple(c) for c in mask.reshape(-1, 3)}
        assert colours <= {tuple(c) for c in PALETTE}  # every pixel is a class colour
    assert main(["predict", str(ckpt), "missing.png", "--out", str(out)]) == 2
