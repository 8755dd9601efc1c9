"""Procedural noise and anti-aliased (box-filtered) coverage of stripes and bands."""

from __future__ import annotations

import cv2
import numpy as np


def smooth_noise(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
    """Smooth unit-variance noise with features about ``cell`` pixels wide."""
    grid_height, grid_width = height // cell + 3, width // cell + 3
    grid = rng.standard_normal((grid_height, grid_width)).astype(np.float32)
    upsampled = cv2.resize(grid, (grid_width * cell, grid_height * cell), interpolation=cv2.INTER_CUBIC)[
        cell : cell + height, cell : cell + width
    ]
    return upsampled / (float(upsampled.std()) + 1e-6)


def tileable_noise(rng: np.random.Generator, cells: int, size: int) -> np.ndarray:
    """Smooth unit-variance noise of ``size`` x ``size`` that tiles seamlessly."""
    grid = np.tile(rng.standard_normal((cells, cells)).astype(np.float32), (3, 3))
    upsampled = cv2.resize(grid, (3 * size, 3 * size), interpolation=cv2.INTER_CUBIC)[size : 2 * size, size : 2 * size]
    return upsampled / (float(upsampled.std()) + 1e-6)


def stripes(coord: np.ndarray, period: float, duty: float, footprint: np.ndarray | float) -> np.ndarray:
    """Box-filtered coverage of a square wave (on for the first ``duty`` of each period) over a footprint."""
    footprint = np.maximum(footprint, 1e-3)
    on_length = duty * period

    def integral(x: np.ndarray) -> np.ndarray:
        periods = np.floor(x / period)
        return periods * on_length + np.minimum(x - periods * period, on_length)

    return np.clip((integral(coord + footprint / 2) - integral(coord - footprint / 2)) / footprint, 0.0, 1.0)


def band(coord: np.ndarray, lo: float, hi: float, footprint: np.ndarray | float) -> np.ndarray:
    """Box-filtered coverage of the interval [lo, hi] over a footprint centred at ``coord``."""
    footprint = np.maximum(footprint, 1e-3)
    return np.clip(
        (np.minimum(coord + footprint / 2, hi) - np.maximum(coord - footprint / 2, lo)) / footprint, 0.0, 1.0
    )
