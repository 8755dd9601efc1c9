"""COCO evaluation of a detector (pycocotools' ``COCOeval``, the standard protocol).

Box AP (and mask AP for Mask R-CNN): AP averaged over IoU 0.50:0.95, AP50, AP75, and AP for small /
medium / large objects, over the categories that have ground truth in the split. Detections are
torchvision's post-processed outputs (score > ``box_score_thresh``, at most ``box_detections_per_img``
per image); masks are thresholded at 0.5, as torchvision's reference evaluation does.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from ..engine.distributed import DistInfo, broadcast_from_main, gather_to_main
from .coco import encode_mask

STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def coco_ground_truth(data: dict[str, Any]):
    """A pycocotools ``COCO`` object from an in-memory annotation dict (quietly)."""
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def detections_to_coco(
    outputs: list[dict[str, torch.Tensor]], image_ids: list[int], category_ids: list[int], masks: bool
) -> list[dict[str, Any]]:
    """torchvision outputs (``boxes`` x1y1x2y2, ``scores``, ``labels`` 1..K, ``masks`` N x 1 x H x W)
    -> COCO result records (``bbox`` as x, y, w, h; ``category_id`` the COCO id of label k)."""
    results = []
    for output, image_id in zip(outputs, image_ids):
        boxes = output["boxes"].detach().cpu().double()
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
        scores = output["scores"].detach().cpu().tolist()
        labels = output["labels"].detach().cpu().tolist()
        binary = (output["masks"][:, 0] > 0.5).cpu().numpy() if masks and "masks" in output else None
        for i, (box, score, label) in enumerate(zip(xywh, scores, labels)):
            record = {"image_id": int(image_id), "category_id": category_ids[label - 1], "bbox": box, "score": score}
            if binary is not None:
                record["segmentation"] = encode_mask(binary[i])
            results.append(record)
    return results


def coco_stats(gt_data: dict[str, Any], results: list[dict[str, Any]], iou_type: str) -> dict[str, float]:
    """``COCOeval`` of ``results`` against ``gt_data`` -> ``{AP, AP50, AP75, APs, APm, APl}`` in [0, 1]
    (-1 where COCO has no ground truth for a size range). No detections at all scores 0 where there
    is ground truth (and -1 where there is none), as COCOeval scores an empty result set."""
    from pycocotools.cocoeval import COCOeval

    gt = coco_ground_truth(gt_data)
    with contextlib.redirect_stdout(io.StringIO()):
        if results:
            # loadRes edits the records in place and, when a record has a bbox, takes the object's area
            # from the box: mask AP by size must use mask areas, so the segm records go without boxes
            keep = ("image_id", "category_id", "score", "segmentation" if iou_type == "segm" else "bbox")
            dt = gt.loadRes([{k: r[k] for k in keep} for r in results])
        else:  # loadRes refuses an empty list
            dt = coco_ground_truth({**gt_data, "annotations": []})
        evaluator = COCOeval(gt, dt, iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(value) for name, value in zip(STATS, evaluator.stats[: len(STATS)])}


@torch.no_grad()
def evaluate_detector(
    model: nn.Module,
    loader: Iterable,
    gt_data: dict[str, Any],
    category_ids: list[int],
    device: torch.device | str = "cpu",
    dist: DistInfo | None = None,
) -> dict[str, float]:
    """Run ``model`` (eval mode, restored afterwards) over ``loader`` (``(images, targets)`` batches
    with ``image_id`` in each target) and score it: ``bbox_AP``, ``bbox_AP50``, ... and, for a model
    with a mask head, ``segm_AP``, ``segm_AP50``, ...; ``detections`` counts the kept detections.

    Under ``torchrun`` (``dist`` enabled) each rank runs its shard of the split (whole batches of the
    one-process evaluation: torchvision pads a batch to its largest image, so batch composition
    matters); rank 0 gathers the detections, scores them and sends every rank the metrics, which
    are those of one process (COCOeval reads an image's detections in their own order, which the
    gather keeps)."""
    masks = getattr(getattr(model, "roi_heads", None), "mask_head", None) is not None
    was_training = model.training
    model.eval()
    results: list[dict[str, Any]] = []
    try:
        for images, targets in loader:
            outputs = model([image.to(device) for image in images])
            ids = [int(t["image_id"]) for t in targets]
            results.extend(detections_to_coco(outputs, ids, category_ids, masks))
    finally:
        model.train(was_training)
    info = dist or DistInfo()
    shards = gather_to_main(results, info)
    metrics: dict[str, float] | None = None
    if shards is not None:  # rank 0 (or the one process)
        merged = [record for shard in shards for record in shard]
        metrics = {}
        for iou_type in ("bbox", "segm") if masks else ("bbox",):
            stats = coco_stats(gt_data, merged, iou_type)
            metrics.update({f"{iou_type}_{name}": value for name, value in stats.items()})
        metrics["detections"] = float(len(merged))
        metrics["images"] = float(len(gt_data["images"]))
    return broadcast_from_main(metrics, info)


def describe(metrics: dict) -> str:
    """One line: box AP / AP50 / AP75 (and mask AP), in percent ("-" where COCO found no ground truth)."""

    def pct(key: str) -> str:
        return "-" if metrics[key] < 0 else f"{100 * metrics[key]:.2f}"

    text = f"box AP {pct('bbox_AP')}  AP50 {pct('bbox_AP50')}  AP75 {pct('bbox_AP75')}"
    if "segm_AP" in metrics:
        text += f"  mask AP {pct('segm_AP')}  AP50 {pct('segm_AP50')}"
    return text
