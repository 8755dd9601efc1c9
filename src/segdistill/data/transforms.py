"""Joint image/mask augmentation (albumentations 2.x) and ImageNet normalisation.

Shapes: augmentations take and return ``image`` uint8 HxWx3 (RGB) and ``mask`` uint8 HxW (train ids,
255 = ignore). :func:`normalize` turns the uint8 image into a float32 3xHxW tensor.

Randomness and reproducibility
------------------------------
albumentations 2.x ignores the global ``random``/``numpy`` seeds: every transform owns a
``py_random`` (``random.Random``) and a ``random_generator`` (``numpy.random.Generator``).
``A.Compose(seed=s)`` / ``compose.set_random_seed(s)`` give *each child transform its own generator
seeded with the same s*, so the children draw identical streams (e.g. ``HorizontalFlip(p=0.5)`` and
``GaussianBlur(p=0.5)`` would always fire together). We therefore use
``compose.set_random_state(rng, py_rng)`` instead, which hands one shared pair of generators to the
whole pipeline (see :func:`reseed_transform`).

The seed is explicit (``train_transform(seed=...)``) or, by default, ``torch.initial_seed()`` at
build time, i.e. the value of the last ``torch.manual_seed`` call: with ``num_workers=0`` a training
run is deterministic for a fixed ``torch.manual_seed`` called before the transform is built.
DataLoader workers receive a copy of the transform with the *same* generator state, so pass
``worker_init_fn=seed_worker``: it reseeds ``random``, ``numpy`` and the worker's copy of the
dataset's transform from ``torch.initial_seed()``, which PyTorch sets to ``base_seed + worker_id``
(``base_seed`` is drawn from the main process's torch RNG for every epoch's iterator), so workers get
distinct streams that are reproducible for a fixed ``torch.manual_seed``.

Training runs go one step further (:mod:`segdistill.data.sampling`): every sample's augmentation is
reseeded from (run seed, epoch, position), so it depends neither on the worker that loads it nor on
what was loaded before; that is what makes a resumed run exact.
"""

from __future__ import annotations

import os
import random

# albumentations >= 1.4 queries PyPI on import (up to a 2 s timeout, and a warning when offline).
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from segdistill.base.normalisation import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from segdistill.data.labels import IGNORE_INDEX  # noqa: E402

# The ImageNet mean as an RGB uint8 colour: fill value for padded / rotated-in image pixels.
MEAN_FILL: tuple[int, int, int] = (124, 116, 104)

# The APD / PSPNet (semseg) recipe: cv2.GaussianBlur with a 5x5 kernel and sigma=0, which OpenCV
# turns into sigma = 0.3 * ((5 - 1) * 0.5 - 1) + 0.8 = 1.1. albumentations 2.x needs sigma > 0
# explicitly (sigma_limit=0 would divide by zero), so we spell it out.
BLUR_KSIZE: int = 5
BLUR_SIGMA: float = 1.1
ROTATE_P: float = 0.5  # semseg's RandRotate applies a rotation to half of the samples


def train_transform(
    crop_size: tuple[int, int],
    scale: tuple[float, float] = (0.5, 2.0),
    rotate: float = 10.0,
    blur_p: float = 0.5,
    flip_p: float = 0.5,
    seed: int | None = None,
) -> A.Compose:
    """The APD training augmentation: random scale, rotate, Gaussian blur, h-flip, pad, random crop.

    ``crop_size`` is (height, width). Scale factors are drawn uniformly from ``scale``; the rotation
    angle uniformly from [-rotate, rotate] with probability 0.5 (``rotate=0`` disables it). Padding
    and rotation fill the image with :data:`MEAN_FILL` and the mask with 255. Masks always use
    nearest-neighbour interpolation. ``seed=None`` takes ``torch.initial_seed()`` (see module doc).
    Call as ``t(image=uint8 HxWx3, mask=uint8 HxW)`` -> dict with the same keys, of size crop_size.
    """
    crop_h, crop_w = int(crop_size[0]), int(crop_size[1])
    if crop_h <= 0 or crop_w <= 0:
        raise ValueError(f"crop_size must be positive, got {crop_size}")
    if not 0 < scale[0] <= scale[1]:
        raise ValueError(f"scale must satisfy 0 < min <= max, got {scale}")
    steps: list[A.BasicTransform] = [
        # scale_limit is relative in albumentations: factor = 1 + uniform(limit); default p is 0.5.
        A.RandomScale(
            scale_limit=(scale[0] - 1.0, scale[1] - 1.0),
            interpolation=cv2.INTER_LINEAR,
            mask_interpolation=cv2.INTER_NEAREST,
            p=1.0,
        ),
    ]
    if rotate > 0:
        steps.append(
            A.Rotate(
                limit=(-rotate, rotate),
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
                border_mode=cv2.BORDER_CONSTANT,
                fill=MEAN_FILL,
                fill_mask=IGNORE_INDEX,
                p=ROTATE_P,
            )
        )
    steps += [
        A.GaussianBlur(blur_limit=(BLUR_KSIZE, BLUR_KSIZE), sigma_limit=(BLUR_SIGMA, BLUR_SIGMA), p=blur_p),
        A.HorizontalFlip(p=flip_p),
        A.PadIfNeeded(
            min_height=crop_h,
            min_width=crop_w,
            position="center",
            border_mode=cv2.BORDER_CONSTANT,
            fill=MEAN_FILL,
            fill_mask=IGNORE_INDEX,
        ),
        A.RandomCrop(height=crop_h, width=crop_w),
    ]
    compose = A.Compose(steps, mask_interpolation=cv2.INTER_NEAREST)
    reseed_transform(compose, torch.initial_seed() if seed is None else seed)
    return compose


def reseed_transform(transform: A.BaseCompose, seed: int) -> None:
    """Make the whole pipeline draw from ONE numpy and ONE python generator seeded with ``seed``."""
    transform.set_random_state(np.random.default_rng(seed), random.Random(seed))


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: reseed random/numpy and the worker's augmentation pipeline.

    ``torch.initial_seed()`` inside a worker is ``base_seed + worker_id``, distinct per worker and
    per epoch, and reproducible for a fixed ``torch.manual_seed`` in the main process.
    """
    seed = torch.initial_seed()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    info = torch.utils.data.get_worker_info()
    if info is None:
        return
    pending: list[object] = [info.dataset]
    while pending:  # unwrap Subset (.dataset) and ConcatDataset (.datasets)
        dataset = pending.pop()
        transform = getattr(dataset, "transform", None)
        if isinstance(transform, A.BaseCompose):
            reseed_transform(transform, seed)
        if hasattr(dataset, "dataset"):
            pending.append(dataset.dataset)
        pending.extend(getattr(dataset, "datasets", []))


def normalize(image: np.ndarray) -> torch.Tensor:
    """uint8 HxWx3 RGB -> float32 3xHxW tensor, ``(x / 255 - IMAGENET_MEAN) / IMAGENET_STD``."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 HxWx3 image, got {image.dtype} {image.shape}")
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(3, 1, 1)
    return tensor.sub_(mean).div_(std).contiguous()


def denormalize(tensor: torch.Tensor) -> np.ndarray:
    """Inverse of :func:`normalize`: float 3xHxW tensor (any device) -> uint8 HxWx3 RGB array."""
    if tensor.ndim != 3 or tensor.shape[0] != 3:
        raise ValueError(f"expected a 3xHxW tensor, got shape {tuple(tensor.shape)}")
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(3, 1, 1)
    image = (tensor.detach().float().cpu() * std + mean).mul_(255.0).round_().clamp_(0, 255)
    return image.to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
