import math

import numpy as np
import pytest
import torch

from segdistill.engine.metrics import ConfusionMatrix


def test_hand_built_confusion_matrix():
    # 3 classes; ground truth and prediction on 8 pixels, one ignored.
    target = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 255]])
    pred = torch.tensor([[0, 0, 1, 1, 2, 2, 2, 0]])
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    assert cm.matrix.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 2]]
    m = cm.compute()
    # IoU0 = 2/(3+2-2)=2/3, IoU1 = 1/(2+2-1)=1/3, IoU2 = 2/(2+3-2)=2/3
    assert m["iou"] == pytest.approx([2 / 3, 1 / 3, 2 / 3])
    assert m["mIoU"] == pytest.approx(5 / 9)
    assert m["pixel_acc"] == pytest.approx(5 / 7)
    assert m["mean_acc"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)


def test_absent_classes_are_excluded_and_accumulation_is_over_the_split():
    cm = ConfusionMatrix(4)
    cm.update(torch.tensor([0, 0]), torch.tensor([0, 0]))
    cm.update(torch.tensor([1, 0]), torch.tensor([1, 1]))
    m = cm.compute()
    assert m["iou"][2] is None and m["iou"][3] is None
    # class 0: tp 2, gt 2, pred 3 -> 2/3 ; class 1: tp 1, gt 2, pred 1 -> 1/2 (pooled, not per-image)
    assert m["mIoU"] == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_matches_numpy_reference_on_random_data():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 6, size=(3, 17, 23))
    target[rng.random(target.shape) < 0.1] = 255
    pred = rng.integers(0, 6, size=target.shape)
    cm = ConfusionMatrix(6)
    cm.update(torch.from_numpy(pred), torch.from_numpy(target))
    ious = []
    valid = target != 255
    for c in range(6):
        inter = np.sum((pred == c) & (target == c) & valid)
        union = np.sum(((pred == c) | (target == c)) & valid)
        ious.append(inter / union)
    assert cm.compute()["mIoU"] == pytest.approx(float(np.mean(ious)))


def test_bad_target_values_raise():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="outside"):
        cm.update(torch.tensor([0]), torch.tensor([7]))
    assert math.isnan(ConfusionMatrix(2).compute()["mIoU"])
