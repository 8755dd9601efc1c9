"""Adaptive Perspective Distillation for detectors: APD on every FPN level.

The paper reports APD on detection and instance segmentation without giving the formulation; the
release has no such code. Ours (see the README section "Detection and instance segmentation"):

* **Where**: every FPN level the student and teacher share (P2..P5 for ResNet-FPN; levels are paired
  by spatial size, so a student and a teacher with different backbones pair correctly). P6
  (``"pool"``) is left out: it is a strided subsample of P5 and adds no new features. The terms are
  averaged over levels, so the weights mean the same as in segmentation whatever the level count.
* **Which classes**: a per-pixel label map of the batch at the detector's input resolution (after
  torchvision's resize, before padding), built from the ground truth: background is class 0; each
  instance writes its class id (1..K) over its **mask** (``target: masks``, the default when the data
  has masks) or its **box** (``target: boxes``); instances are written largest first, so a smaller
  instance in front of a larger one keeps its pixels. Padding added to batch images of different
  sizes and crowd regions (``iscrowd``, e.g. a Cityscapes group of cars) are ignored (255). The
  map is resized to each level by nearest neighbour (inside APDLoss).
* **Background is a class**: detection has no stuff labels, and an image often holds one thing class
  only; without a background prototype the adaptive classifier of such an image would have a single
  class and nothing to distil. With it, each image's perspective separates its objects from its own
  background, which is the detector's first decision (objectness).
* **The loss**: :class:`~segdistill.distill.apd.APDLoss` unchanged (adapters, cosine logits with
  scale 10, KL of the student's adaptive predictions to the teacher's, prototype alignment, the
  teacher adapter trained by its own cross-entropy with Adam 1e-5), one instance shared by all
  levels (as the RPN and RoI heads are shared across levels).
* **Weights**: ``apd_kl`` 10 and ``apd_align`` 10, the segmentation release's values; the detection
  losses are unchanged (weight 1). Classic logit KD is not part of it: a detector's class logits are
  per proposal, and the student's proposals are not the teacher's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..base.labels import IGNORE_INDEX
from ..base.step import OwnStep
from ..distill.apd import APDLoss
from ..errors import UserError

TARGETS = ("masks", "boxes")


def instance_label_map(
    targets: list[dict[str, torch.Tensor]],
    image_sizes: list[tuple[int, int]],
    batch_size_hw: tuple[int, int],
    source: str = "masks",
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """``B x H x W`` int64 class map of a (resized, padded) detection batch.

    ``targets[b]``: ``boxes`` ``N x 4`` (x1, y1, x2, y2) and ``labels`` ``N`` in the resized image's
    pixels (and ``masks`` ``N x h x w`` for ``source="masks"``); ``image_sizes[b] = (h, w)``, the
    image's size inside the padded ``batch_size_hw``; an optional ``ignore`` (``H0 x W0`` crowd pixels
    at the image's original size) is resized to ``(h, w)``. 0 is background, 255 padding and crowds."""
    if source not in TARGETS:
        raise UserError(f"APD target must be one of {', '.join(TARGETS)}, got {source!r}")
    height, width = batch_size_hw
    device = targets[0]["labels"].device if targets else torch.device("cpu")
    out = torch.full((len(targets), height, width), ignore_index, dtype=torch.int64, device=device)
    for b, (target, (h, w)) in enumerate(zip(targets, image_sizes)):
        canvas = out[b, :h, :w]
        canvas.zero_()
        boxes, labels = target["boxes"], target["labels"]
        if source == "masks":
            if "masks" not in target:
                raise UserError("APD target 'masks' needs instance masks in the data; use target: boxes")
            masks = target["masks"][:, :h, :w].bool()
            order = torch.argsort(masks.flatten(1).sum(1), descending=True, stable=True).tolist()
            for i in order:
                canvas[masks[i]] = labels[i]
        else:
            areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            order = torch.argsort(areas, descending=True, stable=True).tolist()
            for i in order:
                x1, y1 = (int(v) for v in boxes[i, :2].floor().clamp(min=0).tolist())
                x2, y2 = int(boxes[i, 2].ceil().clamp(max=w)), int(boxes[i, 3].ceil().clamp(max=h))
                canvas[y1:y2, x1:x2] = labels[i]
        if "ignore" in target:  # crowd regions, at the image's size before torchvision's resize
            ignore = F.interpolate(target["ignore"][None, None].float(), size=(h, w), mode="nearest")[0, 0]
            canvas[ignore > 0] = ignore_index
    return out


def pair_levels(student: dict[str, tuple[int, ...]], teacher: dict[str, tuple[int, ...]]) -> list[tuple[str, str]]:
    """``(student level, teacher level)`` pairs of equal spatial size (shapes ``C x h x w`` of one
    probe input), every student level but ``"pool"``; UserError if a level has no partner."""
    pairs = []
    for s_name, s_shape in student.items():
        if s_name == "pool":
            continue
        partners = [t for t, t_shape in teacher.items() if t != "pool" and t_shape[-2:] == s_shape[-2:]]
        if not partners:
            raise UserError(
                f"the student's FPN level {s_name!r} ({s_shape[-2]}x{s_shape[-1]}) has no teacher level of the "
                f"same size ({', '.join(f'{t}: {v[-2]}x{v[-1]}' for t, v in teacher.items())})"
            )
        pairs.append((s_name, partners[0]))
    if not pairs:
        raise UserError("the student has no FPN level for APD besides 'pool'")
    return pairs


class DetectionAPDLoss(nn.Module):
    """APD over FPN levels: ``loss(student_feats, teacher_feats, label_map)`` ->
    ``{"apd_kl", "apd_align", "apd_teacher_ce"}``, each the mean over the level pairs.

    ``student_feats`` / ``teacher_feats``: the FPN ``OrderedDict`` s (``B x C x h_l x w_l``),
    ``label_map``: ``B x H x W`` from :func:`instance_label_map`. Options (``distill.options.apd``):
    ``target`` masks|boxes, ``adapter``, ``adapter_channels``, ``scale``, ``scope``, ``teacher_adapter_lr``."""

    terms = ("apd_kl", "apd_align", "apd_teacher_ce")
    own_terms = frozenset({"apd_teacher_ce"})

    def __init__(
        self,
        num_classes: int,
        student_channels: int,
        teacher_channels: int,
        levels: list[tuple[str, str]],
        *,
        target: str = "masks",
        **apd_options,
    ) -> None:
        """``apd_options``: :class:`~segdistill.distill.apd.APDLoss`'s keyword options, its defaults."""
        super().__init__()
        if target not in TARGETS:
            raise UserError(f"distill.options.apd.target must be one of {', '.join(TARGETS)}, got {target!r}")
        self.levels = list(levels)
        self.target = target
        self.apd = APDLoss(num_classes, student_channels, teacher_channels, **apd_options)

    def own_steps(self) -> list[OwnStep]:
        return self.apd.own_steps()

    def student_parameters(self) -> list[nn.Parameter]:
        return self.apd.student_parameters()

    def forward(
        self,
        student_feats: dict[str, torch.Tensor],
        teacher_feats: dict[str, torch.Tensor],
        label_map: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        totals: dict[str, torch.Tensor] = {}
        for s_level, t_level in self.levels:
            for name, value in self.apd(student_feats[s_level], teacher_feats[t_level], label_map).items():
                totals[name] = totals[name] + value if name in totals else value
        return {name: value / len(self.levels) for name, value in totals.items()}
