"""The input normalisation of the data pipeline: every image reaches a model as
``(pixel / 255 - IMAGENET_MEAN) / IMAGENET_STD``, RGB, ``float32 3 x H x W``."""

from __future__ import annotations

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
