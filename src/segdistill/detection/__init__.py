"""Object detection and instance segmentation: torchvision Faster R-CNN / Mask R-CNN with FPN,
COCO-format data (real COCO, Cityscapes converted, the generated street scenes), COCO metrics, and
APD on the FPN levels (:class:`~segdistill.detection.apd.DetectionAPDLoss`)."""

from .apd import DetectionAPDLoss, instance_label_map, pair_levels
from .coco import cityscapes_to_coco, write_coco
from .dataset import CocoDetection, collate_detection
from .models import build_detector
from .task import DetectionDistiller, DetectionSupervisedTask

__all__ = [
    "CocoDetection",
    "DetectionAPDLoss",
    "DetectionDistiller",
    "DetectionSupervisedTask",
    "build_detector",
    "cityscapes_to_coco",
    "collate_detection",
    "instance_label_map",
    "pair_levels",
    "write_coco",
]
