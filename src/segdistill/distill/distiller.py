"""The Distiller: a frozen teacher, a student, taps on both, and any set of distillation losses."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function

from ..base.labels import IGNORE_INDEX
from ..base.outputs import output_logits
from ..base.schema import closest
from ..base.step import OwnStep, StepOutput, distillation_param_groups, segmentation_losses
from ..errors import UserError
from .base import DistillLoss
from .taps import TapRecorder, find_module


def to_common_grid(student_map: torch.Tensor, teacher_map: torch.Tensor) -> torch.Tensor:
    """Resize a teacher map to the student map's spatial size (bilinear, align_corners=False).

    The student's grid is the common grid: the student's features are what is trained, so they are
    never resampled; the teacher's are only read."""
    if teacher_map.shape[-2:] == student_map.shape[-2:]:
        return teacher_map
    return F.interpolate(teacher_map.float(), size=student_map.shape[-2:], mode="bilinear", align_corners=False)


class Distiller(nn.Module):
    """Trains ``student`` with cross-entropy (+ auxiliary) and ``losses`` computed on tapped layers.

    ``student_taps`` / ``teacher_taps`` map tap names (``"feat"``, ``"logits"``) to module names
    (``"head.bottleneck"``); a tap captures that module's output. The teacher is frozen: eval mode,
    no gradients, run under ``no_grad``. Teacher maps are brought to the student's grid before the
    losses see them. ``weights`` may name a method (``{"apd": 10}`` weighs all its terms) or a single
    term (``{"apd_align": 5}``); unnamed terms weigh 1.

    ``forward(images B x 3 x H x W, labels B x H x W)`` returns ``out.logits`` (student, ``B x K x H x W``),
    ``out.losses`` (weighted scalar terms: ``ce``, ``aux_ce``, the methods' terms), ``out.total``, and
    ``out.own_losses`` (terms that train modules with their own optimizers, e.g. ``apd_teacher_ce``).
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        student_taps: Mapping[str, str],
        teacher_taps: Mapping[str, str],
        losses: Mapping[str, DistillLoss],
        weights: Mapping[str, float] | None = None,
        *,
        aux_weight: float = 0.4,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        super().__init__()
        self.student = student
        self.teacher = teacher
        self.losses = nn.ModuleDict(dict(losses))
        self.weights = dict(weights or {})
        self.aux_weight = aux_weight
        self.ignore_index = ignore_index
        for name, loss in self.losses.items():
            for tap in getattr(loss, "taps", ()):
                for side, taps in (("student", student_taps), ("teacher", teacher_taps)):
                    if tap not in taps:
                        raise UserError(f"loss {name!r} reads tap {tap!r}, which {side}_taps does not define")
        known = set(self.losses) | {"ce", "aux_ce"}
        for loss in self.losses.values():
            known |= {t for t in getattr(loss, "terms", ()) if t not in getattr(loss, "own_terms", ())}
        for key in self.weights:
            if key not in known:
                close = closest(key, sorted(known))
                hint = f"did you mean {close[0]!r}?" if close else f"losses and terms: {', '.join(sorted(known))}"
                raise UserError(f"weight {key!r} names no loss or term ({hint})")
        self.teacher.eval()
        self.teacher.requires_grad_(False)
        for side, model, taps in (("student", student, student_taps), ("teacher", teacher, teacher_taps)):
            for module_name in taps.values():
                find_module(model, module_name, side)  # every named tap must exist, read or not
        read = {tap for loss in self.losses.values() for tap in getattr(loss, "taps", ())}  # only hook what is read
        self._student_taps = TapRecorder(student, {k: v for k, v in student_taps.items() if k in read}, "student")
        self._teacher_taps = TapRecorder(teacher, {k: v for k, v in teacher_taps.items() if k in read}, "teacher")

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        self.teacher.eval()  # the teacher stays frozen (BatchNorm statistics included)
        return self

    def _weight(self, method: str, term: str) -> float:
        return float(self.weights.get(term, self.weights.get(method, 1.0)))

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        self._student_taps.clear()
        self._teacher_taps.clear()
        with record_function("segdistill.teacher_forward"), torch.no_grad():
            self.teacher(images)
        teacher_maps = self._teacher_taps.collect()
        with record_function("segdistill.student_forward"):
            output = self.student(images)
        student_maps = self._student_taps.collect()
        teacher_maps = {k: to_common_grid(student_maps[k], v) for k, v in teacher_maps.items()}
        with record_function("segdistill.loss.ce"):
            losses = segmentation_losses(output, labels, self.aux_weight, self.ignore_index)
        own: dict[str, torch.Tensor] = {}
        for name, loss in self.losses.items():
            with record_function(f"segdistill.loss.{name}"):
                terms = loss.forward_taps(student_maps, teacher_maps, labels)
            for term, value in terms.items():
                if term in loss.own_terms:
                    own[term] = value
                else:
                    losses[term] = self._weight(name, term) * value
        total = sum(losses.values())
        return StepOutput(total=total, losses=losses, logits=output_logits(output), own_losses=own)

    # ---------------------------------------------------------------- trainer interface
    def own_steps(self) -> list[OwnStep]:
        """Every loss module with its own optimizer (adapters, discriminators), in loss order."""
        return [step for loss in self.losses.values() for step in loss.own_steps()]

    @property
    def clips_gradients(self) -> bool:
        """Whether a loss clips its own modules' gradient norm (Af-DCD's release: 15)."""
        return any(getattr(loss, "max_grad_norm", None) is not None for loss in self.losses.values())

    def clip_gradients(self) -> None:
        """Clip each such loss's gradients (after backward and rank averaging, before the step)."""
        for loss in self.losses.values():
            if getattr(loss, "max_grad_norm", None) is not None:
                loss.clip_grad_norm_()

    def param_groups(self, lr: float, head_lr_mult: float) -> list[dict]:
        """The student's groups (backbone at ``lr``, head at ``lr * head_lr_mult``) plus the losses'
        student-side modules (adapters, projectors) at the head's rate."""
        extra = [p for loss in self.losses.values() for p in loss.student_parameters()]
        return distillation_param_groups(self.student, extra, lr, head_lr_mult)

    def trainable_state_dict(self) -> dict:
        """Everything trained besides the student: the loss modules (adapters, discriminators)."""
        return self.losses.state_dict()

    def load_trainable_state_dict(self, state: dict) -> None:
        self.losses.load_state_dict(state)
