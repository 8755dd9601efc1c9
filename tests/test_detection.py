"""Detection and instance segmentation: COCO export, loader, APD on FPN levels, COCO metrics, CLI."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from test_resume import assert_same_state

from segdistill.cli import main
from segdistill.detection.apd import DetectionAPDLoss, instance_label_map, pair_levels
from segdistill.detection.coco import CATEGORIES, cityscapes_to_coco, decode_mask, write_coco
from segdistill.detection.dataset import CocoDetection, collate_detection
from segdistill.detection.evaluate import coco_stats, describe
from segdistill.detection.models import build_detector, fpn_shapes
from segdistill.detection.task import DetectionDistiller
from segdistill.engine.checkpoint import load_training_checkpoint
from segdistill.errors import UserError

pytest.importorskip("pycocotools")

TINY_DETECTOR = [
    "model.backbone=resnet18",
    "model.fpn_channels=16",
    "model.representation_size=32",
    "model.min_size=64",
    "model.max_size=128",
    "model.options={box_batch_size_per_image: 32, rpn_post_nms_top_n_train: 50, rpn_post_nms_top_n_test: 50, "
    "rpn_pre_nms_top_n_test: 100, box_detections_per_img: 20}",
]


@pytest.fixture(scope="module")
def coco_data(tiny_data, tmp_path_factory) -> Path:
    """The tiny generated dataset with COCO annotations for train and val."""
    root = tmp_path_factory.mktemp("coco") / "synthetic"
    import shutil

    shutil.copytree(tiny_data, root)
    for split in ("train", "val"):
        write_coco(root, split)
    return root


def test_coco_export_round_trips_the_instance_ids(tiny_data):
    """Every thing instance of every image comes back as one annotation whose mask is exactly the
    pixels holding its instance id, whose box is the mask's extent and whose category is its class."""
    coco = cityscapes_to_coco(tiny_data, "train")
    by_image: dict[int, list[dict]] = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    cityscapes_of = {c["id"]: c["cityscapes_id"] for c in CATEGORIES}
    checked = 0
    for image in coco["images"]:
        stem = Path(image["file_name"]).name.replace("_leftImg8bit.png", "")
        city = Path(image["file_name"]).parent.name
        ids = np.array(Image.open(tiny_data / "gtFine/train" / city / f"{stem}_gtFine_instanceIds.png")).astype(int)
        things = {int(v) for v in np.unique(ids) if v >= 1000}
        anns = by_image.get(image["id"], [])
        assert {a["instance_id"] for a in anns} == things
        for ann in anns:
            mask = decode_mask(ann["segmentation"], image["height"], image["width"]).astype(bool)
            assert np.array_equal(mask, ids == ann["instance_id"])
            ys, xs = np.nonzero(mask)
            x, y, w, h = ann["bbox"]
            assert (x, y, x + w - 1, y + h - 1) == (xs.min(), ys.min(), xs.max(), ys.max())
            assert ann["area"] == mask.sum()
            assert cityscapes_of[ann["category_id"]] == ann["instance_id"] // 1000
            checked += 1
    assert checked > 10


def _cityscapes_root(tmp_path: Path, instance_ids: np.ndarray) -> Path:
    root = tmp_path / "cs"
    (root / "leftImg8bit/train/c").mkdir(parents=True)
    (root / "gtFine/train/c").mkdir(parents=True)
    h, w = instance_ids.shape
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(root / "leftImg8bit/train/c/c_0_0_leftImg8bit.png")
    Image.fromarray(instance_ids.astype(np.uint16)).save(root / "gtFine/train/c/c_0_0_gtFine_instanceIds.png")
    return root


def test_crowd_regions_become_iscrowd_and_unevaluated_things_are_dropped(tmp_path):
    """As in real Cityscapes: a bare thing label id (a group) is a crowd region; caravan (29) is not
    an evaluated class; stuff is not an instance."""
    ids = np.full((8, 10), 7)  # road
    ids[0:2, 0:3] = 26001  # a car instance
    ids[4:6, 0:4] = 26  # a group of cars
    ids[6:8, 6:9] = 29000  # a caravan
    coco = cityscapes_to_coco(_cityscapes_root(tmp_path, ids), "train")
    anns = sorted(coco["annotations"], key=lambda a: a["iscrowd"])
    assert [(a["category_id"], a["iscrowd"], a["bbox"]) for a in anns] == [
        (3, 0, [0.0, 0.0, 3.0, 2.0]),
        (3, 1, [0.0, 4.0, 4.0, 2.0]),
    ]
    assert [c["name"] for c in coco["categories"]] == [
        "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
    ]  # fmt: skip


def test_loader_targets_match_masks_and_flip_keeps_them_aligned(coco_data):
    plain = CocoDetection(coco_data, coco_data / "annotations/instances_train.json", masks=True)
    flipped = CocoDetection(coco_data, coco_data / "annotations/instances_train.json", masks=True, flip_p=1.0)
    assert plain.num_classes == 9
    for i in range(len(plain)):
        image, target = plain[i]
        image_f, target_f = flipped[i]
        assert image.shape[0] == 3 and 0.0 <= float(image.min()) and float(image.max()) <= 1.0
        assert torch.equal(image_f, image.flip(-1))
        for t in (target, target_f):
            for box, mask in zip(t["boxes"], t["masks"]):
                ys, xs = torch.nonzero(mask, as_tuple=True)
                expected = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
                assert torch.equal(box, expected)
        assert torch.equal(target_f["labels"], target["labels"])


def test_loader_errors_name_the_file(coco_data, tmp_path):
    ann = json.loads((coco_data / "annotations/instances_val.json").read_text())
    with pytest.raises(UserError, match="not found: .*missing.json"):
        CocoDetection(coco_data, tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="bad.json is not valid JSON"):
        CocoDetection(coco_data, bad)
    wrong = json.loads(json.dumps(ann))
    wrong["annotations"][0]["category_id"] = 99
    (tmp_path / "cat.json").write_text(json.dumps(wrong))
    with pytest.raises(UserError, match=r"cat.json: annotation \d+ has category_id 99"):
        CocoDetection(coco_data, tmp_path / "cat.json")
    moved = json.loads(json.dumps(ann))
    moved["images"][0]["file_name"] = "nowhere/x.png"
    (tmp_path / "img.json").write_text(json.dumps(moved))
    with pytest.raises(UserError, match="image not found: .*nowhere/x.png"):
        CocoDetection(coco_data, tmp_path / "img.json")[0]
    resized = json.loads(json.dumps(ann))
    resized["images"][0]["width"] = 999
    (tmp_path / "size.json").write_text(json.dumps(resized))
    with pytest.raises(UserError, match="is 128x64 but .*size.json says 999x64"):
        CocoDetection(coco_data, tmp_path / "size.json")[0]


def test_label_map_paints_small_instances_over_large_and_ignores_padding():
    big = torch.tensor([[0.0, 0.0, 6.0, 4.0]])
    small = torch.tensor([[1.0, 1.0, 3.0, 3.0]])
    target = {"boxes": torch.cat([small, big]), "labels": torch.tensor([2, 1])}
    out = instance_label_map([target], [(5, 7)], (6, 8), source="boxes")
    expected = torch.zeros(6, 8, dtype=torch.int64)
    expected[0:4, 0:6] = 1
    expected[1:3, 1:3] = 2
    expected[5, :] = 255  # padding rows/columns outside the 5 x 7 image
    expected[:, 7] = 255
    assert torch.equal(out[0], expected)
    masks = torch.zeros(2, 5, 7, dtype=torch.uint8)
    masks[0, 1:3, 1:3] = 1
    masks[1, 0:4, 0:6] = 1
    out_m = instance_label_map([{**target, "masks": masks}], [(5, 7)], (6, 8), source="masks")
    assert torch.equal(out_m[0], expected)


def test_crowd_pixels_are_ignored_in_the_label_map_at_the_resized_size():
    target = {"boxes": torch.tensor([[0.0, 0.0, 8.0, 8.0]]), "labels": torch.tensor([1])}  # resized coordinates
    ignore = torch.zeros(4, 4, dtype=torch.uint8)
    ignore[2:, 2:] = 1  # crowd pixels at the original 4 x 4 size
    out = instance_label_map([{**target, "ignore": ignore}], [(8, 8)], (8, 8), source="boxes")  # resized 2x
    expected = torch.ones(8, 8, dtype=torch.int64)
    expected[4:, 4:] = 255
    assert torch.equal(out[0], expected)


def test_crowds_become_ignore_masks_and_malformed_annotations_name_the_file(coco_data, tmp_path):
    ann = json.loads((coco_data / "annotations/instances_train.json").read_text())
    first = next(a for a in ann["annotations"] if a["image_id"] == ann["images"][0]["id"])
    crowd = json.loads(json.dumps(ann))
    for a in crowd["annotations"]:
        if a["id"] == first["id"]:
            a["iscrowd"] = 1
    (tmp_path / "crowd.json").write_text(json.dumps(crowd))
    for masks in (True, False):
        _, target = CocoDetection(coco_data, tmp_path / "crowd.json", masks=masks)[0]
        plain = CocoDetection(coco_data, coco_data / "annotations/instances_train.json", masks=True)[0][1]
        assert len(target["labels"]) == len(plain["labels"]) - 1  # the crowd is not a training target
        mask = decode_mask(first["segmentation"], *target["ignore"].shape)
        if masks:
            assert np.array_equal(target["ignore"].numpy(), mask)
        else:
            assert target["ignore"].numpy()[mask.astype(bool)].all()  # its box covers its pixels
    broken = json.loads(json.dumps(ann))
    broken["annotations"][0]["segmentation"] = {"size": [3, 3], "counts": 5}
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    index = [im["id"] for im in sorted(ann["images"], key=lambda im: im["id"])].index(
        broken["annotations"][0]["image_id"]
    )
    with pytest.raises(UserError, match=r"broken.json: annotation \d+ (is malformed|has a 3x3 mask)"):
        CocoDetection(coco_data, tmp_path / "broken.json", masks=True)[index]
    no_id = json.loads(json.dumps(ann))
    del no_id["images"][1]["id"]
    (tmp_path / "noid.json").write_text(json.dumps(no_id))
    with pytest.raises(UserError, match=r"noid.json: images\[1\] needs an integer 'id'"):
        CocoDetection(coco_data, tmp_path / "noid.json")


def test_a_box_clipped_to_nothing_is_skipped(coco_data, tmp_path):
    ann = json.loads((coco_data / "annotations/instances_train.json").read_text())
    image = sorted(ann["images"], key=lambda im: im["id"])[0]
    edge = {"id": 10**6, "image_id": image["id"], "category_id": 1, "bbox": [image["width"], 0, 1, 5], "iscrowd": 0}
    ann["annotations"].append(edge)
    (tmp_path / "edge.json").write_text(json.dumps(ann))
    _, target = CocoDetection(coco_data, tmp_path / "edge.json")[0]
    widths = target["boxes"][:, 2] - target["boxes"][:, 0]
    assert len(widths) and bool((widths >= 1).all())


def test_levels_pair_by_size_across_backbones():
    student = build_detector("faster_rcnn", "mobilenet_v3_large", 3)
    teacher = build_detector("faster_rcnn", "resnet18", 3, fpn_channels=32)

    s, t = fpn_shapes(student, (64, 128)), fpn_shapes(teacher, (64, 128))
    pairs = pair_levels(s, t)
    assert pairs == [("0", "0"), ("1", "1"), ("2", "2"), ("3", "3")]  # strides 4, 8, 16, 32 on both
    assert all(s[a][-2:] == t[b][-2:] for a, b in pairs)
    with pytest.raises(UserError, match="has no teacher level of the same size"):
        pair_levels({"0": (8, 3, 3)}, t)


def test_coco_metrics_known_answers(coco_data):
    """Detections equal to the ground truth score AP 1; no detections score 0; boxes shifted by a
    whole box width score 0."""
    gt = json.loads((coco_data / "annotations/instances_val.json").read_text())
    things = [a for a in gt["annotations"] if not a["iscrowd"]]
    perfect = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]), "score": 1.0}
        for a in things
    ]
    assert coco_stats(gt, perfect, "bbox")["AP"] == pytest.approx(1.0)
    segm = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "score": 1.0, "segmentation": a["segmentation"]}
        for a in things
    ]
    assert coco_stats(gt, segm, "segm")["AP"] == pytest.approx(1.0)
    # masks that are right but carry boxes twice too large: mask AP stays 1 (it ignores the boxes)
    both = [
        {**m, "bbox": [b["bbox"][0], b["bbox"][1], 2 * b["bbox"][2], 2 * b["bbox"][3]]} for m, b in zip(segm, perfect)
    ]
    assert coco_stats(gt, both, "segm")["AP"] == pytest.approx(1.0)
    # no detections: 0 where a size range has ground truth, -1 (COCO's "no ground truth") where none
    areas = [a["area"] for a in things]
    has = {"APs": min(areas) <= 32**2, "APm": any(32**2 <= x <= 96**2 for x in areas), "APl": max(areas) >= 96**2}
    assert not all(has.values())  # the tiny scenes have no large object: the -1 case is exercised
    for iou_type in ("bbox", "segm"):
        empty = coco_stats(gt, [], iou_type)
        assert empty == {"AP": 0.0, "AP50": 0.0, "AP75": 0.0, **{k: 0.0 if v else -1.0 for k, v in has.items()}}
    shifted = [{**r, "bbox": [r["bbox"][0] + 2 * r["bbox"][2] + 5, *r["bbox"][1:]]} for r in perfect]
    assert coco_stats(gt, shifted, "bbox")["AP50"] == pytest.approx(0.0)
    no_truth = {"bbox_AP": -1.0, "bbox_AP50": -1.0, "bbox_AP75": 0.5}  # a split without ground truth
    assert describe(no_truth) == "box AP -  AP50 -  AP75 50.00"


def test_two_iteration_apd_distillation_trains_only_the_student(coco_data):
    """Finite losses; gradients reach the student and its adapter, never the teacher; the teacher
    adapter moves only through its own optimizer; the teacher's weights stay as they were."""
    torch.manual_seed(0)
    kw = {"min_size": 64, "max_size": 128, "options": {"box_batch_size_per_image": 32}}
    student = build_detector("mask_rcnn", "resnet18", 9, fpn_channels=16, representation_size=32, **kw)
    teacher = build_detector("mask_rcnn", "resnet18", 9, fpn_channels=32, representation_size=32, **kw)
    levels = pair_levels(fpn_shapes(student, (64, 128)), fpn_shapes(teacher, (64, 128)))
    assert [a for a, _ in levels] == ["0", "1", "2", "3"]
    apd = DetectionAPDLoss(9, 16, 32, levels, adapter_channels=16)
    task = DetectionDistiller(student, teacher, apd)
    task.train()
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    adapter_before = [p.clone() for p in apd.apd.teacher_adapter.parameters()]
    data = CocoDetection(coco_data, coco_data / "annotations/instances_train.json", masks=True)
    optimizer = torch.optim.SGD(task.param_groups(0.01, 1.0), lr=0.01, momentum=0.9)
    (name, module, own, _) = task.own_steps()[0]
    for step in range(2):
        images, targets = collate_detection([data[2 * step], data[2 * step + 1]])
        out = task(images, targets)
        assert {"loss_classifier", "loss_mask", "apd_kl", "apd_align"} <= set(out.losses)
        assert all(torch.isfinite(v) for v in out.losses.values()) and torch.isfinite(out.own_losses[name])
        own.zero_grad()
        out.own_losses[name].backward()
        own.step()
        optimizer.zero_grad()
        out.total.backward()
        assert all(p.grad is None for p in teacher.parameters())
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.backbone.parameters())
        assert all(p.grad is not None for p in apd.apd.student_adapter.parameters())
        optimizer.step()
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in teacher_before.items())
    assert any(not torch.equal(a, b) for a, b in zip(adapter_before, apd.apd.teacher_adapter.parameters()))


def _detect_args(coco_data: Path, tmp_path: Path) -> list[str]:
    return [
        f"data.root={coco_data}",
        f"out_dir={tmp_path / 'runs'}",
        "data.batch_size=2",
        *TINY_DETECTOR,
        "train.iters=4",
        "train.log_interval=2",
        "train.warmup_iters=2",
        "train.checkpoint_interval=2",
    ]


@pytest.fixture
def tiny_teacher(coco_data, tmp_path) -> str:
    args = _detect_args(coco_data, tmp_path)
    assert main(["detect", "train", "configs/synthetic/detection/teacher.yaml", *args, "name=t", "train.iters=2"]) == 0
    return str(tmp_path / "runs/t/checkpoints/last.pt")


def _teacher_args(path: str) -> list[str]:
    return [f"teacher.{a.split('.', 1)[1]}" for a in TINY_DETECTOR] + [f"teacher.weights={path}"]


def test_detect_cli_trains_distills_evaluates_and_resumes_exactly(
    coco_data, tmp_path, tiny_teacher, monkeypatch, capsys
):
    """train -> distill -> eval through the CLI; a distillation interrupted after step 2 and resumed
    ends with the same weights, optimizer and adapter states as an uninterrupted one."""
    args = [*_detect_args(coco_data, tmp_path), *_teacher_args(tiny_teacher), "distill.options.apd.adapter_channels=8"]
    recipe = "configs/synthetic/detection/apd.yaml"
    assert main(["detect", "distill", recipe, *args, "name=whole"]) == 0
    summary = json.loads((tmp_path / "runs/whole/summary.json").read_text())
    assert {"bbox_AP", "bbox_AP50", "bbox_AP75", "segm_AP"} <= set(summary["val"])
    records = [json.loads(x) for x in (tmp_path / "runs/whole/metrics.jsonl").read_text().splitlines()]
    assert "apd_kl" in records[0] and "loss_mask" in records[0]

    calls = {"n": 0}
    forward = DetectionDistiller.forward

    def dies_at_step_3(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return forward(self, *a, **k)

    monkeypatch.setattr(DetectionDistiller, "forward", dies_at_step_3)
    assert main(["detect", "distill", recipe, *args, "name=cut"]) == 130
    monkeypatch.setattr(DetectionDistiller, "forward", forward)
    assert main(["detect", "distill", recipe, *args, "name=cut", "--resume"]) == 0
    a = load_training_checkpoint(tmp_path / "runs/whole/checkpoints/last.pt")
    b = load_training_checkpoint(tmp_path / "runs/cut/checkpoints/last.pt")
    for key in ("model", "task", "optimizer", "extra_optimizers", "epoch", "batch_in_epoch"):
        assert_same_state(a[key], b[key], key)

    out = tmp_path / "eval.json"
    ckpt = str(tmp_path / "runs/whole/checkpoints/last.pt")
    assert main(["detect", "eval", recipe, *args, "--checkpoint", ckpt, "--json", str(out)]) == 0
    assert json.loads(out.read_text())["bbox_AP"] == pytest.approx(summary["val"]["bbox_AP"])

    Path(tiny_teacher).write_bytes(Path(tiny_teacher).read_bytes() + b"retrained")  # the teacher file changes
    capsys.readouterr()
    assert main(["detect", "distill", recipe, *args, "name=whole", "--resume"]) == 2
    assert "changed since this run started" in capsys.readouterr().err


def test_detect_eval_refuses_torchrun(coco_data, tmp_path, monkeypatch, capsys):
    """`detect eval` is one process: under torchrun's environment it stops with one line, before
    every rank evaluates the whole split and writes the same --json file."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    args = [*_detect_args(coco_data, tmp_path), "--checkpoint", "x.pt"]
    assert main(["detect", "eval", "configs/synthetic/detection/student.yaml", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: segdistill detect eval runs in one process: run it without torchrun"


def test_detect_cli_user_errors(coco_data, tmp_path, capsys):
    args = _detect_args(coco_data, tmp_path)
    recipe = "configs/synthetic/detection/student.yaml"
    cases = [
        (["model.backbon=resnet18"], "unknown config key 'model.backbon'"),
        (["model.options={rpn_batch_size: 3}"], "unknown detector option 'rpn_batch_size'"),
        (["model.num_classes=5"], "model.num_classes is 5 but .*instances_train.json has 8 categories"),
        (["data.dataset=coco", "data.train_ann=nope.json"], "COCO annotation file not found: .*nope.json"),
    ]
    for extra, message in cases:
        assert main(["detect", "train", recipe, *args, *extra, "name=e"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: "), err
        import re

        assert re.search(message, err[0]), err[0]
    apd = ["detect", "distill", "configs/synthetic/detection/apd.yaml", *args, "name=e"]
    assert main([*apd, "teacher.weights=null"]) == 2
    assert "needs a 'teacher' section with weights" in capsys.readouterr().err
    assert main([*apd, *_teacher_args("x.pt"), "teacher.min_size=96"]) == 2
    assert "teacher.min_size (96) != model.min_size (64)" in capsys.readouterr().err


def test_data_coco_command_writes_annotations(tiny_data, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(tiny_data, root)
    assert main(["data", "coco", str(root), "--splits", "val"]) == 0
    data = json.loads((root / "annotations/instances_val.json").read_text())
    assert len(data["images"]) == 4 and data["annotations"]


def test_data_synth_coco_writes_both_splits(tmp_path):
    out = tmp_path / "gen"
    args = ["--out", str(out), "--train", "2", "--val", "1", "--height", "64", "--width", "128", "--workers", "1"]
    assert main(["data", "synth", *args, "--coco"]) == 0
    for split, count in (("train", 2), ("val", 1)):
        data = json.loads((out / f"annotations/instances_{split}.json").read_text())
        assert len(data["images"]) == count and (out / data["images"][0]["file_name"]).is_file()


def test_detection_evaluation_loaders_do_not_draw_from_the_global_rng(coco_data, assert_leaves_global_rng):
    """An evaluation during training leaves torch's global RNG (RPN / RoI sampling, dropout) untouched."""
    from rich.console import Console

    from segdistill.detection.config import load_detection_config
    from segdistill.detection.run import build_detection_datasets, build_detection_loaders

    config = load_detection_config("configs/synthetic/detection/student.yaml", [f"data.root={coco_data}"])
    _, val = build_detection_loaders(config, *build_detection_datasets(config, Console(stderr=True)))
    assert_leaves_global_rng(val)


class OracleDetector(torch.nn.Module):
    """Returns each val image's ground-truth boxes, every other one shifted by 2 pixels, plus one
    confident false positive: COCO scores it well above 0 and below 1 (a non-trivial AP)."""

    def __init__(self, val: CocoDetection) -> None:
        super().__init__()
        self.truth = {}
        for index in range(len(val)):
            image, target = val[index]
            self.truth[self.key(image)] = target

    @staticmethod
    def key(image: torch.Tensor) -> float:
        return round(float(image.double().sum()), 3)

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        outputs = []
        for image in images:
            target = self.truth[self.key(image)]
            boxes = target["boxes"].clone()
            boxes[::2] += 2.0
            boxes = torch.cat([boxes, torch.tensor([[0.0, 0.0, 20.0, 20.0]])])
            n = len(boxes)
            scores = torch.linspace(0.9, 0.5, n)
            labels = torch.cat([target["labels"], torch.tensor([1])])
            outputs.append({"boxes": boxes, "scores": scores.roll(1), "labels": labels})
        return outputs


def test_sharded_evaluation_scores_like_one_process(coco_data, monkeypatch):
    """Under torchrun each rank evaluates its shard of the val split and the detections are gathered:
    the metrics equal one process's evaluation of the whole split exactly (simulated here: rank 1's
    detections are what the gather returns beside rank 0's)."""
    from rich.console import Console

    import segdistill.detection.evaluate as evaluate_module
    from segdistill.detection.config import load_detection_config
    from segdistill.detection.run import build_detection_datasets, build_detection_loaders
    from segdistill.engine.distributed import DistInfo

    config = load_detection_config("configs/synthetic/detection/student.yaml", [f"data.root={coco_data}"])
    train, val = build_detection_datasets(config, Console(stderr=True))
    oracle = OracleDetector(val)
    gt, ids = val.data, val.category_ids
    whole = evaluate_module.evaluate_detector(oracle, build_detection_loaders(config, train, val)[1], gt, ids)
    assert 0.2 < whole["bbox_AP"] < 0.99 and whole["detections"] > len(val)

    config.data.batch_size = 1  # 4 val images: 2 batches per rank
    one = list(build_detection_loaders(config, train, val)[1].batch_sampler)
    shards = [build_detection_loaders(config, train, val, rank, 2)[1] for rank in (0, 1)]
    # whole batches of the one-process evaluation (padding makes an image's company matter), each once
    assert sorted(b for s in shards for b in s.batch_sampler) == sorted(one) and len(one) == len(val)
    kept = {}
    monkeypatch.setattr(evaluate_module, "broadcast_from_main", lambda obj, info: obj)

    def rank1_sends(obj: list, info: DistInfo) -> None:  # what gather_to_main does on rank 1
        kept["rank1"] = obj

    monkeypatch.setattr(evaluate_module, "gather_to_main", rank1_sends)
    assert evaluate_module.evaluate_detector(oracle, shards[1], gt, ids, dist=DistInfo(1, 2)) is None
    monkeypatch.setattr(evaluate_module, "gather_to_main", lambda obj, info: [obj, kept["rank1"]])
    sharded = evaluate_module.evaluate_detector(oracle, shards[0], gt, ids, dist=DistInfo(0, 2))
    assert sharded == whole


@pytest.mark.slow
def test_two_process_detection_distillation(coco_data, tmp_path, tiny_teacher):
    """`segdistill detect distill` under 2 gloo processes (torchrun's environment): both ranks finish,
    only rank 0 talks, the checkpoint holds both ranks' RNG states, and the gathered evaluation of the
    sharded val split equals a one-process `detect eval` of the saved weights."""
    from test_distributed import launch

    args = [*_detect_args(coco_data, tmp_path), *_teacher_args(tiny_teacher), "distill.options.apd.adapter_channels=8"]
    recipe = "configs/synthetic/detection/apd.yaml"
    procs = launch(2, ["detect", "distill", recipe, *args, "name=ddp", "model.options.box_score_thresh=0.0"])
    for p in procs:
        p.wait(timeout=300)
    errors = [p.stderr.read() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    assert errors[1].strip() == ""
    run = tmp_path / "runs/ddp"
    summary = json.loads((run / "summary.json").read_text())
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4, 4] and "apd_kl" in records[0]
    state = load_training_checkpoint(run / "checkpoints/last.pt")
    assert len(state["rng"]) == 2 and not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])
    out = tmp_path / "eval.json"
    ckpt = str(run / "checkpoints/last.pt")
    eval_args = [*args, "model.options.box_score_thresh=0.0", "--checkpoint", ckpt, "--json", str(out)]
    assert main(["detect", "eval", recipe, *eval_args]) == 0
    single = json.loads(out.read_text())
    assert single["detections"] > 0
    for key, value in summary["val"].items():
        if key not in ("train_seconds", "batch_size", "skipped_batches"):
            assert single[key] == value, key


def test_detect_bench_runs_both_methods_per_seed_reuses_them_and_reports_paired_intervals(
    coco_data, tmp_path, tiny_teacher, monkeypatch, capsys
):
    """baseline and APD for seeds 0 and 1 under one recipe; the table's figures are the runs' own
    (summary.json), the APD - baseline interval is the paired t interval with 1 degree of freedom; a
    second call reuses every run and the teacher's evaluation; a changed teacher file is refused."""
    args = [*_detect_args(coco_data, tmp_path), *_teacher_args(tiny_teacher), "distill.options.apd.adapter_channels=8"]
    args = [a for a in args if not a.startswith("train.iters")] + ["train.iters=2"]
    out = tmp_path / "bench"
    bench = ["detect", "bench", "configs/synthetic/detection/apd.yaml", *args, "--seeds", "0", "1", "--out", str(out)]
    assert main(bench) == 0
    summaries = {
        (m, s): json.loads((out / f"{m}_seed{s}" / "summary.json").read_text())["val"]
        for m in ("baseline", "apd")
        for s in (0, 1)
    }
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["method"], r["seed"]) for r in rows] == [
        ("baseline", "0"),
        ("baseline", "1"),
        ("apd", "0"),
        ("apd", "1"),
    ]
    for row in rows:  # each row is its run's (the training times tell the runs apart; 2 steps score AP 0)
        val = summaries[(row["method"], int(row["seed"]))]
        assert float(row["train_seconds"]) == pytest.approx(val["train_seconds"], abs=0.01)
        assert float(row["bbox_AP"]) == pytest.approx(val["bbox_AP"], abs=1e-6)
        assert float(row["segm_AP50"]) == pytest.approx(val["segm_AP50"], abs=1e-6)
    baseline = yaml.safe_load((out / "baseline_seed0" / "config.yaml").read_text())
    assert baseline["teacher"] is None and baseline["distill"] is None  # it uses neither
    markdown = (out / "results.md").read_text()
    teacher = json.loads((out / "teacher.json").read_text())
    assert f"teacher box AP {100 * teacher['val']['bbox_AP']:.2f}" in markdown

    def must_not_run(*a, **k):
        raise AssertionError("a finished run was run again")

    monkeypatch.setattr("segdistill.detection.bench.run_detect_train", must_not_run)
    monkeypatch.setattr("segdistill.detection.bench.run_detect_distill", must_not_run)
    monkeypatch.setattr("segdistill.detection.bench.run_detect_eval", must_not_run)
    assert main(bench) == 0
    assert (out / "results.md").read_text() == markdown

    capsys.readouterr()
    assert main([*bench, "data.flip_p=0.25"]) == 2  # trained otherwise: refused, not resumed and re-scored
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "baseline_seed0 holds a run finished under another config (data.flip_p" in err[0], err

    Path(tiny_teacher).write_bytes(Path(tiny_teacher).read_bytes() + b"retrained")
    assert main(bench) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "apd_seed0 was distilled from another teacher file" in err[0], err


def test_detect_bench_user_errors(coco_data, tmp_path, monkeypatch, capsys):
    """Options of another subcommand, a baseline recipe with another schedule, a recipe without a teacher."""
    args = _detect_args(coco_data, tmp_path)
    recipes = tmp_path / "recipes"
    shutil.copytree("configs/synthetic/detection", recipes)
    (recipes / "t.pt").write_bytes(b"x")
    student = recipes / "student.yaml"
    student.write_text(student.read_text().replace("lr: 0.01", "lr: 0.05"))
    detection = "configs/synthetic/detection"
    cases = [
        (["detect", "train", f"{detection}/student.yaml", *args, "--seeds", "0"], "--seeds: only for detect bench"),
        (["detect", "bench", f"{detection}/apd.yaml", *args, "--resume"], "--resume: not for detect bench"),
        (
            ["detect", "bench", str(recipes / "apd.yaml"), *args, f"teacher.weights={recipes / 't.pt'}"],
            "student.yaml differs from .*apd.yaml in train.lr",
        ),
        (["detect", "bench", str(recipes / "student.yaml"), *args], "detect bench needs a detect distill recipe"),
        (
            [
                "detect",
                "bench",
                f"{detection}/apd.yaml",
                *args,
                f"teacher.weights={recipes / 't.pt'}",
                "--seeds",
                "0",
                "0",
            ],
            "--seeds: seed 0 is given twice",
        ),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and re.search(message, err[0]), err
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["detect", "bench", f"{detection}/apd.yaml", *args]) == 2
    assert "run it without torchrun" in capsys.readouterr().err


def test_detect_bench_statistics_leave_a_diverged_seed_out():
    """Means over the finished seeds, gains and the paired interval over the seeds where both finished,
    the gap closed against the teacher, s/it as the median."""
    from segdistill.detection.bench import summarise

    def run(box: float, mask: float, seconds: float) -> dict:
        return {"val": {"bbox_AP": box, "segm_AP": mask, "train_seconds": seconds}, "iters": 10}

    results = {
        "baseline": [run(0.10, 0.08, 10.0), run(0.12, 0.09, 11.0), run(0.11, 0.10, 30.0)],
        "apd": [run(0.13, 0.09, 20.0), {"diverged": {"step": 4}}, run(0.15, 0.12, 22.0)],
    }
    rows = summarise(results, {"val": {"bbox_AP": 0.20, "segm_AP": 0.15}})
    box = rows["apd"]["bbox_AP"]
    assert box["per_seed"] == [0.13, None, 0.15]
    assert box["mean"] == pytest.approx(0.14) and box["sd"] == pytest.approx(0.02**0.5 / 10)
    assert box["gain"] == pytest.approx(0.035)  # seeds 0 and 2: +0.03, +0.04
    assert box["vs_baseline"]["n"] == 2
    half = 12.706 * (0.01 / 2**0.5) / 2**0.5
    assert (box["vs_baseline"]["low"], box["vs_baseline"]["high"]) == (
        pytest.approx(0.035 - half),
        pytest.approx(0.035 + half),
    )
    assert box["gap_closed"] == pytest.approx(0.035 / (0.20 - 0.105))  # against the paired seeds' baseline
    assert rows["baseline"]["bbox_AP"]["mean"] == pytest.approx(0.11)
    assert rows["baseline"]["s_per_it"] == pytest.approx(1.1) and rows["apd"]["s_per_it"] == pytest.approx(2.1)
    assert rows["apd"]["time_ratio"] == pytest.approx(2.1 / 1.1)


def test_detect_bench_table_from_known_runs(tmp_path, monkeypatch, capsys):
    """The markdown and csv hold the runs' figures, the gain and gap closed, and the paired t interval
    (2 degrees of freedom) computed here independently; the teacher is evaluated once per setting."""
    teacher_file = tmp_path / "t.pt"
    teacher_file.write_bytes(b"teacher")
    box = {"baseline": (0.10, 0.12, 0.11), "apd": (0.13, 0.135, 0.15)}
    mask = {"baseline": (0.08, 0.085, 0.09), "apd": (0.09, 0.10, 0.10)}

    def fake_run(config, resume, console):
        method = config.name.split("_seed")[0]
        val = {"bbox_AP": box[method][config.seed], "bbox_APl": -1.0, "segm_AP": mask[method][config.seed]}
        val.update({"bbox_AP50": 0.3, "bbox_AP75": 0.1, "segm_AP50": 0.2})  # what a run's line prints
        return {"val": {**val, "train_seconds": 60.0 if method == "baseline" else 90.0}, "iters": 600}

    evaluated = []

    def fake_eval(config, checkpoint, console=None):
        evaluated.append(config.data.batch_size)
        assert config.model.backbone == "resnet50" and checkpoint == str(teacher_file)  # the teacher's section
        return {"bbox_AP": 0.20, "bbox_APl": -1.0, "segm_AP": 0.15}

    monkeypatch.setattr("segdistill.detection.bench.run_detect_train", fake_run)
    monkeypatch.setattr("segdistill.detection.bench.run_detect_distill", fake_run)
    monkeypatch.setattr("segdistill.detection.bench.run_detect_eval", fake_eval)
    out = tmp_path / "bench"
    argv = ["detect", "bench", "configs/synthetic/detection/apd.yaml", f"teacher.weights={teacher_file}"]
    argv += ["--seeds", "0", "1", "2", "--out", str(out)]
    assert main(argv) == 0
    markdown = (out / "results.md").read_text()

    def interval(apd: tuple, base: tuple) -> str:
        diffs = [100 * (a - b) for a, b in zip(apd, base)]
        mean = sum(diffs) / 3
        half = 4.303 * (sum((d - mean) ** 2 for d in diffs) / 2) ** 0.5 / 3**0.5
        text = f"{mean:+.2f} [{mean - half:+.2f}, {mean + half:+.2f}]"
        return f"**{text} resolved**" if mean - half > 0 or mean + half < 0 else text

    assert f"box AP {interval(box['apd'], box['baseline'])}" in markdown  # +2.83 [-0.29, +5.96]
    assert f"mask AP {interval(mask['apd'], mask['baseline'])}" in markdown  # resolved: +1.17 [+0.45, +1.88]
    assert "resolved**" in markdown.split("mask AP **")[1]
    apd_row = next(line for line in markdown.splitlines() if line.startswith("| apd |")).split(" | ")
    assert apd_row[1:5] == ["13.83 ± 1.04", "13.00 / 13.50 / 15.00", "+2.83 ± 1.26", "31.5 %"]
    assert apd_row[-2:] == ["0.150", "x1.50 |"]
    assert "teacher box AP 20.00, mask AP 15.00" in markdown
    assert "| box APl | - | - | - |" in markdown  # COCO's -1: no large objects
    header = next(csv.reader((out / "results.csv").open()))
    figures = ["bbox_AP", "bbox_AP50", "bbox_AP75", "bbox_APl", "segm_AP", "segm_AP50"]  # COCO's order
    assert header == ["method", "seed", "status", *figures, "train_seconds", "iters"]
    assert main(argv) == 0 and evaluated == [4]  # cached
    assert main([*argv, "data.batch_size=2"]) == 0 and evaluated == [4, 2]  # the val batches changed


def test_detect_bench_runs_the_recipe_given(tmp_path):
    """APD runs the recipe given, whatever its name (not a sibling apd.yaml, not default weights); the
    baseline is student.yaml beside it, without a teacher or distill section."""
    from segdistill.detection.bench import detection_runs

    recipes = tmp_path / "recipes"
    shutil.copytree("configs/synthetic/detection", recipes)
    mine = recipes / "my_apd.yaml"
    mine.write_text((recipes / "apd.yaml").read_text().replace("apd_kl: 10.0", "apd_kl: 3.0"))
    baseline, apd = detection_runs(mine, [0], tmp_path / "out", ["distill.options.apd.scale=5.0"])
    assert apd.source == mine and apd.config.distill.weights == {"apd_kl": 3.0, "apd_align": 10.0}
    assert (
        apd.config.distill.options["apd"]["scale"] == 5.0
        and apd.config.distill.options["apd"]["adapter_channels"] == 512
    )
    assert baseline.source == recipes / "student.yaml"
    assert baseline.config.teacher is None and baseline.config.distill is None
    assert (baseline.config.name, apd.config.name) == ("baseline_seed0", "apd_seed0")
