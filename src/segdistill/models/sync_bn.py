"""Synchronised BatchNorm for multi-process training on CPU (gloo).

``torch.nn.SyncBatchNorm`` only runs on GPUs ("SyncBatchNorm expected input tensor to be on GPU"),
so a CPU ``torchrun`` job would normalise each process's share of the batch with its own statistics
and train a different model than one process with the whole batch. :class:`AllReduceStats`
sums per-channel count, sum and sum of squares over ranks with a differentiable all-reduce, so the
forward and backward passes equal BatchNorm over the global batch (up to float summation order).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class AllReduceStats:
    """Mixin for ``BatchNorm2d`` classes (and subclasses such as timm's ``BatchNormAct2d``, whose
    ``drop`` and ``act`` follow the normalisation): training-mode statistics over every rank's batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or _world_size() == 1:
            return super().forward(x)
        y = self._normalise_over_ranks(x)
        for name in ("drop", "act"):  # timm's BatchNormAct2d
            if hasattr(self, name):
                y = getattr(self, name)(y)
        return y

    def _normalise_over_ranks(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x  # float32 at least
        count = torch.full((1,), xf.numel() / channels, dtype=xf.dtype, device=x.device)
        # Two passes (mean, then squared deviations), as stable as BatchNorm's own kernels; the
        # one-pass E[x^2] - E[x]^2 loses precision where the mean is large against the spread.
        first = _AllReduceSum.apply(torch.cat([xf.sum(dim=(0, 2, 3)), count]))
        total = first[-1]
        mean = first[:channels] / total
        centred = xf - mean.view(1, channels, 1, 1)
        var = _AllReduceSum.apply((centred * centred).sum(dim=(0, 2, 3))) / total
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * total / (total - 1).clamp_min(1.0)
                self.running_mean.mul_(1 - factor).add_(factor * mean.to(self.running_mean.dtype))
                self.running_var.mul_(1 - factor).add_(factor * unbiased.to(self.running_var.dtype))
        shape = (1, channels, 1, 1)
        y = centred * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; the gradient of every rank's input is the sum of all ranks' output gradients."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        return _sum_over_ranks(tensor)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return _sum_over_ranks(grad)


def _sum_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    out = tensor.clone()
    if _world_size() > 1:
        dist.all_reduce(out)
    return out


_CONVERTED: dict[type, type] = {}


def convert_all_reduce_batchnorm(module: nn.Module) -> nn.Module:
    """Make every ``BatchNorm2d`` (subclasses included) in ``module`` synchronise its statistics over
    ranks. The modules keep their class's behaviour, attributes and state-dict keys (their class
    becomes a subclass with :class:`AllReduceStats` mixed in), so checkpoints load either way."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d) and not isinstance(m, AllReduceStats):
            cls = type(m)
            if cls not in _CONVERTED:
                _CONVERTED[cls] = type(f"AllReduce{cls.__name__}", (AllReduceStats, cls), {})
            m.__class__ = _CONVERTED[cls]
    return module
