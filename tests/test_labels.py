"""segdistill's Cityscapes label table against the official cityscapesscripts one."""

from __future__ import annotations

import numpy as np
import pytest

from segdistill.data import labels as ours

official = pytest.importorskip("cityscapesscripts.helpers.labels")


def test_table_matches_official_field_by_field() -> None:
    assert len(ours.LABELS) == len(official.labels)
    for mine, ref in zip(ours.LABELS, official.labels, strict=True):
        assert mine.name == ref.name
        assert mine.id == ref.id, ref.name
        assert mine.train_id == ref.trainId, ref.name
        assert mine.category == ref.category, ref.name
        assert mine.has_instances == ref.hasInstances, ref.name
        assert mine.ignore_in_eval == ref.ignoreInEval, ref.name
        assert tuple(mine.color) == tuple(ref.color), ref.name


def test_id_to_train_id_lut_matches_official_mapping() -> None:
    lut = ours.id_to_train_id_lut()
    assert lut.shape == (256,) and lut.dtype == np.uint8
    for value in range(256):
        ref = official.id2label.get(value)
        expected = 255 if ref is None or ref.trainId in (255, -1) else ref.trainId
        assert lut[value] == expected, value


def test_train_classes_palette_and_inverse_lut() -> None:
    ref = {label.trainId: label for label in official.labels if 0 <= label.trainId < 255}
    assert sorted(ref) == list(range(19))
    assert list(ours.TRAIN_CLASSES) == [ref[t].name for t in range(19)]
    assert ours.PALETTE.shape == (19, 3)
    assert [tuple(c) for c in ours.PALETTE.tolist()] == [ref[t].color for t in range(19)]
    inverse = ours.train_id_to_id_lut()
    for train_id in range(19):
        assert inverse[train_id] == ref[train_id].id
    assert ours.VALID_LABEL_IDS == frozenset(range(34))
