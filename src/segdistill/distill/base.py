"""The interface every distillation loss follows.

A loss is an ``nn.Module`` that declares the taps it reads (``taps``: names such as ``"feat"``,
``"logits"``) and returns a dict of named scalar terms. The :class:`~segdistill.Distiller` captures
the taps from both models, brings teacher maps to the student's grid, and calls
``loss.forward_taps(student, teacher, labels)``; single-tap losses get ``loss(s, t, labels)``.

A loss may own modules trained by the student's optimizer (adapters, projectors) and modules that
need their own optimizer (APD's teacher adapter, SKD's discriminator): those declare themselves in
``own_optimizers()`` together with the names of the terms that train them (``own_terms``); such
terms are never added to the student's total. Own optimizers step before the student's step (APD's
teacher adapter, as the release), or after it for the terms listed in ``steps_after_student`` (a GAN
discriminator, whose parameters the student's adversarial term back-propagates through).
``terms`` lists the names of the terms a loss returns (used to check weight keys).
"""

from __future__ import annotations

import torch
from torch import nn

from ..base.step import OwnStep


class DistillLoss(nn.Module):
    taps: tuple[str, ...] = ("feat",)
    terms: tuple[str, ...] = ()
    own_terms: frozenset[str] = frozenset()
    steps_after_student: frozenset[str] = frozenset()

    def forward_taps(
        self, student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor], labels: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        if len(self.taps) != 1:
            raise TypeError(f"{type(self).__name__} reads several taps and must define forward_taps")
        (tap,) = self.taps
        return self(student[tap], teacher[tap], labels)

    def own_optimizers(self) -> list[tuple[str, nn.Module, torch.optim.Optimizer]]:
        """``(term name, module, optimizer)`` for every part trained by its own optimizer."""
        return []

    def own_steps(self) -> list[OwnStep]:
        """:meth:`own_optimizers` as the trainer's :class:`~segdistill.base.step.OwnStep` s, each stepped
        after the student's step when its term is in ``steps_after_student``."""
        return [
            OwnStep(term, module, optimizer, term in self.steps_after_student)
            for term, module, optimizer in self.own_optimizers()
        ]

    def student_parameters(self) -> list[nn.Parameter]:
        """Parameters trained by the student's optimizer (those not owned by an own optimizer)."""
        owned = {id(p) for _, module, _ in self.own_optimizers() for p in module.parameters()}
        return [p for p in self.parameters() if id(p) not in owned and p.requires_grad]
