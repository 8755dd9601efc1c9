"""``segdistill eval --format cityscapes``: the official cityscapesscripts evaluation of the written
predictions gives our mIoU."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from segdistill.cli import main


def test_official_evaluation_of_exported_predictions_equals_ours(tiny_overrides, tiny_data, tmp_path, capsys):
    import cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling as official

    assert main(["train", "configs/synthetic/student.yaml", *tiny_overrides, "train.iters=8", "name=m"]) == 0
    ckpt = tmp_path / "runs/m/checkpoints/last.pt"
    out, preds = tmp_path / "metrics.json", tmp_path / "preds"
    args = ["eval", "configs/synthetic/student.yaml", *tiny_overrides, "--checkpoint", str(ckpt)]
    assert main([*args, "--format", "cityscapes", "--predictions", str(preds), "--json", str(out)]) == 0
    ours = json.loads(out.read_text())
    files = sorted(preds.glob("*_pred_labelIds.png"))
    ground_truth = sorted(str(p) for p in (tiny_data / "gtFine" / "val").glob("*/*_gtFine_labelIds.png"))
    assert len(files) == len(ground_truth) == 4 and not (tmp_path / "preds.partial").exists()
    ids = np.unique(np.concatenate([np.unique(np.array(Image.open(f))) for f in files]))
    assert set(ids.tolist()) <= {7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33}  # labelIds

    cs_args = official.args
    cs_args.predictionPath, cs_args.predictionWalk = str(preds), None
    cs_args.evalInstLevelScore, cs_args.JSONOutput, cs_args.quiet = False, False, True
    predictions = [official.getPrediction(cs_args, gt) for gt in ground_truth]
    result = official.evaluateImgLists(predictions, ground_truth, cs_args)
    assert result["averageScoreClasses"] == pytest.approx(ours["mIoU"], abs=1e-12)
    names = [official.id2label[i].name for i in range(34) if not official.id2label[i].ignoreInEval]
    official_iou = [result["classScores"][n] for n in names]
    for a, b in zip(official_iou, ours["iou"]):
        assert (b is None and np.isnan(a)) or a == pytest.approx(b, abs=1e-12)

    code = main([*args, "--format", "cityscapes", "--predictions", str(preds)])  # never overwrites
    assert code == 2 and f"prediction folder {preds} already exists" in capsys.readouterr().err
