"""Logit standardisation (Sun et al., "Logit Standardization in Knowledge Distillation", CVPR 2024).

Each pixel's logit vector is z-scored over the classes before the temperature-softened softmax of a
logit-based distillation loss (KD, DKD, DIST here), for the student and the teacher alike. The formula
is the reference's ``normalize`` (sunshangquan/logit-standardization-KD @ f6e5aa5,
``mdistiller/distillers/KD.py`` lines 7-10): ``(z - mean(z)) / (1e-7 + std(z))`` with torch's default
*unbiased* std (divisor ``K - 1``) and the eps added to the std, not inside the square root. The
temperature is applied afterwards by the loss (``standardize(z) / T``).
"""

from __future__ import annotations

import torch

from ..errors import UserError

EPS = 1e-7  # the reference's eps, added to the std


def standardize(logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """``(z - mean_dim z) / (1e-7 + std_dim z)`` with the unbiased std (``K - 1``), for ``B x K x h x w``
    logits (``dim=1``): the reference's formula, on the class axis. The std is computed by hand from the
    centred logits (one full-size temporary fewer than ``Tensor.std`` at 713 x 713); a pixel whose logits
    are all equal maps to 0 with a zero gradient (the guarded square root keeps it from being NaN)."""
    k = logits.shape[dim]
    if k < 2:
        raise UserError(f"logit standardisation needs at least 2 classes along dim {dim}, got {k}")
    centred = logits - logits.mean(dim=dim, keepdim=True)
    var = centred.pow(2).sum(dim=dim, keepdim=True) / (k - 1)
    positive = var > 0
    std = torch.where(positive, torch.where(positive, var, torch.ones_like(var)).sqrt(), torch.zeros_like(var))
    return centred / (EPS + std)
