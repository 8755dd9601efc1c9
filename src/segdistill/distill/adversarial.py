"""Holistic (adversarial) distillation, as SKD introduced it and IFVD and the CIRKD codebase reuse it.

A SAGAN-style discriminator scores segmentation score maps (logits at the feature grid): a
BatchNorm on the input, four spectral-normalised 4x4 stride-2 convolutions (64, 128, 256, 512
channels) with LeakyReLU(0.1), self-attention after the third and the fourth, and a final
convolution to one score per position. It is trained with the hinge loss of the CIRKD codebase
(``losses/adv.py``): ``L_D = d_weight * (mean relu(1 - D(t)) + mean relu(1 + D(s)))`` on detached maps,
by its own Adam optimizer (lr 4e-4, betas 0.9/0.99), stepped *after* the student's step, as the
reference does. The student minimises ``L_G = -mean D(s)`` (weight 0.001).

Difference from the reference: its last layer is a 4x4 convolution without padding, which needs at
least 64 x 64 score maps (4 x 4 after four stride-2 convolutions); ours is a 3x3 convolution with
padding 1, which scores maps down to 16 x 16 (our embedded default's logits); smaller maps are padded
(replicate) to 16 x 16.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from .base import DistillLoss
from .common import check_same_grid, float32


class SelfAttention(nn.Module):
    """SAGAN self-attention: ``x + gamma * attention(x)``, gamma initialised to 0."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        inner = max(channels // 8, 1)
        self.query = nn.Conv2d(channels, inner, 1)
        self.key = nn.Conv2d(channels, inner, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = self.query(x).flatten(2).transpose(1, 2)  # B x N x c'
        k = self.key(x).flatten(2)  # B x c' x N
        attention = torch.bmm(q, k).softmax(dim=-1)  # B x N x N
        out = torch.bmm(self.value(x).flatten(2), attention.transpose(1, 2)).view(b, c, h, w)
        return x + self.gamma * out


class Discriminator(nn.Module):
    """``B x K x h x w`` score maps -> ``B x 1 x h' x w'`` realness scores."""

    def __init__(self, in_channels: int, widths: tuple[int, ...] = (64, 128, 256, 512)) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.BatchNorm2d(in_channels)]
        prev = in_channels
        for i, width in enumerate(widths):
            layers += [spectral_norm(nn.Conv2d(prev, width, 4, stride=2, padding=1)), nn.LeakyReLU(0.1)]
            if i >= len(widths) - 2:
                layers.append(SelfAttention(width))
            prev = width
        layers.append(nn.Conv2d(prev, 1, 3, padding=1))
        self.net = nn.Sequential(*layers)

        self.min_size = 2 ** len(widths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad_h, pad_w = max(self.min_size - x.shape[-2], 0), max(self.min_size - x.shape[-1], 0)
        if pad_h or pad_w:  # maps smaller than 2^depth are padded (replicate) so every conv has an input
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        return self.net(x)


class AdversarialLoss(DistillLoss):
    """Holistic distillation on logits ``B x K x h x w`` (same grid). Returns ``{"adv": L_G, "adv_d": L_D}``;
    ``adv_d`` trains only the discriminator (its own optimizer, stepped after the student's)."""

    taps = ("logits",)
    terms = ("adv", "adv_d")
    own_terms = frozenset({"adv_d"})
    steps_after_student = frozenset({"adv_d"})

    def __init__(
        self,
        num_classes: int,
        d_weight: float = 0.1,
        lr: float = 4e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        widths: tuple[int, ...] = (64, 128, 256, 512),
    ) -> None:
        super().__init__()
        self.discriminator = Discriminator(num_classes, tuple(widths))
        self.d_weight = d_weight
        self.lr, self.betas = lr, tuple(betas)
        self._optimizer: torch.optim.Optimizer | None = None

    def own_optimizers(self) -> list[tuple[str, nn.Module, torch.optim.Optimizer]]:
        if self._optimizer is None:
            self._optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=self.lr, betas=self.betas)
        return [("adv_d", self.discriminator, self._optimizer)]

    def forward(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        check_same_grid("adversarial", student_logits, teacher_logits)
        with torch.autocast(device_type=student_logits.device.type, enabled=False):
            s = float32(student_logits)
            t = float32(teacher_logits.detach())
            generator = -self.discriminator(s).mean()
            d_loss = F.relu(1.0 - self.discriminator(t)).mean() + F.relu(1.0 + self.discriminator(s.detach())).mean()
        return {"adv": generator, "adv_d": self.d_weight * d_loss}
