"""Multi-process training with ``torchrun`` (or any launcher that sets ``RANK``/``WORLD_SIZE``/
``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT``): process-group setup and the few collectives the
trainer uses. One process per device; NCCL on GPUs, gloo on CPU. With ``WORLD_SIZE`` unset or 1
everything here is a no-op, so single-process runs never touch ``torch.distributed``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from ..errors import UserError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, str(default))
    try:
        return int(raw)
    except ValueError:
        raise UserError(f"environment variable {name}={raw!r} is not an integer") from None


def init_distributed(device: torch.device, timeout_s: float) -> tuple[DistInfo, torch.device]:
    """Join the process group that the launcher's environment describes; returns this process's
    rank info and device (``cuda:LOCAL_RANK`` on GPUs). ``timeout_s`` bounds every collective, so a
    process whose peer died stops instead of waiting forever."""
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return DistInfo(), device
    rank, local = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        try:
            dist.init_process_group(backend, rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s))
        except (RuntimeError, ValueError) as exc:
            raise UserError(f"could not join the process group as rank {rank} of {world}: {_first_line(exc)}") from exc
    return DistInfo(rank, world, local), device


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def is_collective_failure(exc: BaseException) -> bool:
    """An error raised by a collective because a peer died, the network broke, or it timed out."""
    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(
        word in text for word in ("gloo", "nccl", "connection", "socket", "timed out", "timeout", "peer")
    )


def lost_peer_error(info: DistInfo, exc: BaseException) -> UserError:
    return UserError(
        f"rank {info.rank} of {info.world_size} lost contact with the other processes "
        f"(a rank died, or the network or train.dist_timeout failed): {_first_line(exc)}"
    )


def all_reduce_mean_(tensors: list[torch.Tensor], info: DistInfo) -> None:
    """Average ``tensors`` in place over ranks (one flattened all-reduce)."""
    if not info.enabled or not tensors:
        return
    flat = torch.cat([t.reshape(-1).float() for t in tensors])
    dist.all_reduce(flat)
    flat /= info.world_size
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset : offset + n].view_as(t))
        offset += n


def average_gradients(params: Iterable[torch.nn.Parameter], info: DistInfo) -> None:
    """Average the gradients of ``params`` over ranks (for modules outside the DDP-wrapped student:
    the methods' adapters and projectors, own-optimizer modules). A missing gradient counts as zero."""
    if not info.enabled:
        return
    params = [p for p in params if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    all_reduce_mean_([p.grad for p in params], info)


def any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """``flag`` or-ed over ranks (every rank must call it)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def gather_to_main(obj: Any, info: DistInfo) -> list[Any] | None:
    """``[obj of rank 0, obj of rank 1, ...]`` on rank 0, ``None`` on the others."""
    if not info.enabled:
        return [obj]
    out: list[Any] | None = [None] * info.world_size if info.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_from_main(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank (the others pass anything, e.g. ``None``)."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_buffers(module: torch.nn.Module, info: DistInfo) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics drift apart between DDP's
    per-forward broadcasts: each rank's last forward updates its own)."""
    if not info.enabled:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
