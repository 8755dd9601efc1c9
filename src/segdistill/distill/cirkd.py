"""CIRKD: cross-image relational distillation (Yang et al., CVPR 2022), as its codebase runs it
(``train_cirkd.py``, ``losses/cirkd_mini_batch.py``, ``losses/cirkd_memory.py``).

* Mini-batch pixel-to-pixel (:class:`CIRKDMiniBatchLoss`): for every ordered pair of images (i, j) of
  the per-device batch (i = j included), the ``hw x hw`` matrix of cosine similarities between the
  pixels of image i and those of image j, softmax along each row at temperature 0.1, and
  ``KL(teacher || student)`` averaged over rows, then over the ``B^2`` pairs.
* Memory-based pixel-to-pixel and pixel-to-region (:class:`CIRKDMemoryLoss`): teacher-only per-class
  queues of pixel embeddings and region (class-mean) embeddings; every valid pixel of the batch is an
  anchor whose similarities (temperature 0.1) to a random contrast set drawn from the queues are
  matched, student (through a projection head) to teacher, by KL.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..base.labels import IGNORE_INDEX
from .base import DistillLoss
from .common import check_channels, check_same_grid, float32, one_hot_valid, resize_labels

# CIRKDMiniBatchLoss(checkpointed=None) checkpoints when the B^2 hw x hw relation matrices exceed this
CHECKPOINT_ABOVE_BYTES = 256 * 2**20


def _row_kl(s_sim: torch.Tensor, t_sim: torch.Tensor, temperature: float) -> torch.Tensor:
    """Sum over rows of ``KL(softmax(t/T) || softmax(s/T))`` (softmax along the last dim)."""
    log_q = F.log_softmax(s_sim / temperature, dim=-1)
    log_p = F.log_softmax(t_sim / temperature, dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum()


def _anchor_image_kl(
    s_i: torch.Tensor, t_i: torch.Tensor, s_all: torch.Tensor, t_all: torch.Tensor, temperature: float
):
    """KL summed over the rows of image i's relations to every image: ``s_i C x hw``, ``s_all B x C x hw``."""
    s_sim = torch.matmul(s_i.t(), s_all)  # B x hw x hw: rows = pixels of image i, columns = pixels of image j
    t_sim = torch.matmul(t_i.t(), t_all)
    return _row_kl(s_sim, t_sim, temperature)


class CIRKDMiniBatchLoss(DistillLoss):
    """Mini-batch cross-image pixel-to-pixel relations on head features ``B x C x h x w`` (channels may
    differ, same grid). ``(1 / B^2) * sum_{i,j} (1 / hw) * sum_rows KL``; τ = 0.1.

    Memory: a pair's matrix is ``hw x hw`` (8192^2 = 268 MB in float32 for a 64 x 128 Cityscapes map).
    The loss is computed one anchor image at a time, each under activation checkpointing, so the peak
    is one image's relations to the batch (``hw x B*hw``) instead of all ``B^2`` pairs with their
    softmax copies kept for backward. ``checkpointed=None`` (the default) checkpoints only when the
    ``B^2`` relation matrices (one copy; the direct backward keeps about 4 of them with their softmaxes)
    would take more than :data:`CHECKPOINT_ABOVE_BYTES`: below that the recomputation in backward is time
    spent for no memory that matters (the embedded default's 16 x 16 maps: 17 MB per copy).
    Checkpointed and direct give the same numbers (the same operators run again).
    ``pool=2`` averages 2x2 windows first (ceil mode), as the reference's ``pooling`` flag does (off in
    its scripts; CIRKDv2 pools 4x4 when h and w >= 256).
    Returns ``{"cirkd_mb": scalar}``. Reference weight 1.
    """

    taps = ("feat",)
    terms = ("cirkd_mb",)

    def __init__(self, temperature: float = 0.1, pool: int = 1, checkpointed: bool | None = None) -> None:
        super().__init__()
        self.temperature = temperature
        self.pool = pool
        self.checkpointed = checkpointed

    def forward(
        self, student_feat: torch.Tensor, teacher_feat: torch.Tensor, labels: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        check_same_grid("CIRKD mini-batch", student_feat, teacher_feat)
        with torch.autocast(device_type=student_feat.device.type, enabled=False):
            f_s = float32(student_feat)
            f_t = float32(teacher_feat.detach())
            if self.pool > 1:
                f_s = F.avg_pool2d(f_s, self.pool, self.pool, ceil_mode=True)
                f_t = F.avg_pool2d(f_t, self.pool, self.pool, ceil_mode=True)
            s = F.normalize(f_s, dim=1).flatten(2)  # B x C_s x hw
            t = F.normalize(f_t, dim=1).flatten(2)
            b, hw = s.shape[0], s.shape[2]
            checkpointed = self.checkpointed
            if checkpointed is None:
                checkpointed = b * b * hw * hw * s.element_size() > CHECKPOINT_ABOVE_BYTES
            total = s.new_zeros(())
            for i in range(b):
                if checkpointed and s.requires_grad:
                    total = total + checkpoint(
                        _anchor_image_kl, s[i], t[i], s, t, self.temperature, use_reentrant=False
                    )
                else:
                    total = total + _anchor_image_kl(s[i], t[i], s, t, self.temperature)
            loss = total / (hw * b * b)
        return {"cirkd_mb": loss}


def _gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` over DDP ranks along dim 0 (no gradient); identity when not distributed."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


class CIRKDMemoryLoss(DistillLoss):
    """Memory-based pixel-to-pixel (``cirkd_pix``) and pixel-to-region (``cirkd_reg``) distillation.

    Inputs: head features ``B x C_s x h x w`` (student) and ``B x C_t x h x w`` (teacher), labels
    ``B x H x W`` (nearest-resized to ``h x w``). Student features pass the projection head
    (1x1 conv ``C_s -> C_t``, BN, ReLU, 1x1 conv, no biases) and are L2-normalised; teacher features are
    L2-normalised. Each step, before the loss, the teacher's embeddings of the batch (all-gathered over
    DDP ranks) are pushed into per-class FIFO queues: per image and present class, the normalised
    class mean (region queue, ``K x region_memory x C_t``) and up to ``pixels_per_image`` randomly
    chosen pixels (pixel queue, ``K x pixel_memory x C_t``). Queues start as random unit vectors.
    One random set of queue slots (``pixel_contrast // K + 1`` pixel, ``region_contrast // K + 1``
    region slots, the same slots for every class) forms the contrast set; every valid pixel is an
    anchor; ``KL(softmax(t.q/τ) || softmax(s.q/τ))`` averaged over anchors (batchmean), τ = 0.1.
    Reference sizes (Cityscapes): 20000 pixel and 2000 region slots per class, contrast 4096 / 1024,
    16 pixels per image and class; weights 0.1 and 0.1. The queues are buffers, saved with checkpoints
    (exact resume); at the reference sizes they take ``K * 22000 * C_t * 4`` bytes (428 MB for K = 19,
    C_t = 256), so a small run should shrink them.

    The reference writes a class's pixels into the last slots and restarts at 0 when they would pass
    the end of the queue; ours wraps around (a plain ring buffer).
    """

    taps = ("feat",)
    terms = ("cirkd_pix", "cirkd_reg")

    def __init__(
        self,
        num_classes: int,
        student_channels: int,
        teacher_channels: int,
        *,
        pixel_memory: int = 20000,
        region_memory: int = 2000,
        pixel_contrast: int = 4096,
        region_contrast: int = 1024,
        pixels_per_image: int = 16,
        temperature: float = 0.1,
        kd_temperature: float = 1.0,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.student_channels = student_channels
        self.teacher_channels = teacher_channels
        self.pixel_contrast = min(pixel_contrast // num_classes + 1, pixel_memory)
        self.region_contrast = min(region_contrast // num_classes + 1, region_memory)
        self.pixels_per_image = pixels_per_image
        self.temperature = temperature
        self.kd_temperature = kd_temperature
        self.ignore_index = ignore_index
        c = teacher_channels
        self.project = nn.Sequential(
            nn.Conv2d(student_channels, c, 1, bias=False),
            nn.BatchNorm2d(c),
            nn.ReLU(inplace=True),
            nn.Conv2d(c, c, 1, bias=False),
        )
        self.register_buffer("pixel_queue", F.normalize(torch.randn(num_classes, pixel_memory, c), dim=2))
        self.register_buffer("pixel_ptr", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("region_queue", F.normalize(torch.randn(num_classes, region_memory, c), dim=2))
        self.register_buffer("region_ptr", torch.zeros(num_classes, dtype=torch.long))

    @staticmethod
    def _push(queue: torch.Tensor, ptr: torch.Tensor, items: torch.Tensor, keep: torch.Tensor) -> None:
        """FIFO write: ``items K x M x C`` where ``keep K x M`` into ``queue K x S x C`` at ``ptr K``."""
        size = queue.shape[1]
        rank = keep.long().cumsum(dim=1) - 1  # position of each kept item among its class's new items
        slots = (ptr[:, None] + rank) % size
        cls = torch.arange(queue.shape[0], device=queue.device)[:, None].expand_as(slots)
        queue[cls[keep], slots[keep]] = items[keep].to(queue.dtype)
        ptr.copy_((ptr + keep.sum(dim=1)) % size)

    @torch.no_grad()
    def enqueue(self, t: torch.Tensor, labels: torch.Tensor) -> None:
        """Push the teacher's normalised embeddings ``t B x C x h x w`` (labels ``B x h x w``)."""
        t, labels = _gather(t), _gather(labels)
        b, c = t.shape[:2]
        onehot = one_hot_valid(labels, self.num_classes, self.ignore_index, t.dtype).flatten(2)  # B x K x hw
        feats = t.flatten(2)  # B x C x hw
        counts = onehot.sum(dim=2)  # B x K
        regions = F.normalize(torch.bmm(onehot, feats.transpose(1, 2)), dim=2)  # B x K x C
        self._push(self.region_queue, self.region_ptr, regions.transpose(0, 1), (counts > 0).t())
        # up to n random pixels per (image, class): the top-n of random keys among the class's pixels
        n = min(self.pixels_per_image, feats.shape[2])
        keys = torch.rand(onehot.shape, device=t.device).masked_fill(onehot == 0, -1.0)
        top, index = keys.topk(n, dim=2)  # B x K x n
        picked = torch.gather(
            feats[:, None].expand(b, self.num_classes, c, -1), 3, index[:, :, None].expand(-1, -1, c, -1)
        )
        picked = picked.permute(1, 0, 3, 2).reshape(self.num_classes, b * n, c)  # K x (B*n) x C
        self._push(self.pixel_queue, self.pixel_ptr, picked, (top >= 0).permute(1, 0, 2).reshape(self.num_classes, -1))

    def _contrast(self, queue: torch.Tensor, count: int) -> torch.Tensor:
        index = torch.randperm(queue.shape[1], device=queue.device)[:count]
        return queue[:, index].reshape(-1, queue.shape[2])  # (K * count) x C

    def _kl(self, s_logits: torch.Tensor, t_logits: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        temp = self.kd_temperature
        log_q = F.log_softmax(s_logits / temp, dim=1)
        log_p = F.log_softmax(t_logits / temp, dim=1)
        per_anchor = (log_p.exp() * (log_p - log_q)).sum(dim=1)
        return (per_anchor * anchors).sum() / anchors.sum().clamp(min=1.0) * temp**2

    def forward(
        self, student_feat: torch.Tensor, teacher_feat: torch.Tensor, labels: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        check_same_grid("CIRKD memory", student_feat, teacher_feat)
        check_channels("CIRKD memory", "student", self.student_channels, student_feat)
        check_channels("CIRKD memory", "teacher", self.teacher_channels, teacher_feat)
        with torch.autocast(device_type=student_feat.device.type, enabled=False):
            s = F.normalize(self.project(float32(student_feat)), dim=1)
            t = F.normalize(float32(teacher_feat.detach()), dim=1)
            grid_labels = resize_labels(labels, tuple(s.shape[-2:]))
            if self.training:
                self.enqueue(t, grid_labels)
            g = grid_labels
            valid = ((g != self.ignore_index) & (g >= 0) & (g < self.num_classes)).flatten().to(s.dtype)
            s_rows = s.permute(0, 2, 3, 1).reshape(-1, s.shape[1])  # B*h*w x C: every pixel, invalid ones weigh 0
            t_rows = t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])
            terms = {}
            for name, queue, count in (
                ("cirkd_pix", self.pixel_queue, self.pixel_contrast),
                ("cirkd_reg", self.region_queue, self.region_contrast),
            ):
                contrast = self._contrast(queue, count).to(s.dtype)
                terms[name] = self._kl(
                    s_rows @ contrast.t() / self.temperature, t_rows @ contrast.t() / self.temperature, valid
                )
        return terms
