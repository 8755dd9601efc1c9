"""The canvas a scene is painted on, back to front: image, labelIds and per-pixel object index."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import cv2
import numpy as np

from .geometry import Camera, Points
from .textures import smooth_noise


class PlanePixels(NamedTuple):
    """The pixels of a vertical side plane: a window at (``top``, ``left``) of ``mask``'s shape."""

    top: int
    left: int
    mask: np.ndarray  # bool, rows x columns
    depth: np.ndarray  # 1 x columns float32: the plane's Z seen in each column
    y: np.ndarray  # rows x columns float32: the height Y above the ground at each pixel


class Canvas:
    """Image, labelIds and per-pixel object index, painted back to front."""

    def __init__(self, rng: np.random.Generator, height: int, width: int) -> None:
        self.height, self.width = height, width
        self.image = np.zeros((height, width, 3), np.float32)
        self.labels = np.zeros((height, width), np.uint8)
        self.objects = np.zeros((height, width), np.int32)  # 0: no object, k: the object_labels[k] instance
        self.object_labels: list[int] = [0]
        self.grain = (0.5 * rng.standard_normal((height, width)) + 0.85 * smooth_noise(rng, height, width, 3)).astype(
            np.float32
        )
        self.low_noise = smooth_noise(rng, height, width, 14)
        self.haze_colour = np.zeros(3, np.float32)
        self.haze_distance = 1e9

    def new_instance(self, label: int) -> int:
        """A new object index for an instance of class ``label``."""
        self.object_labels.append(label)
        return len(self.object_labels) - 1

    def hazed(self, colour: np.ndarray, z: float) -> np.ndarray:
        """``colour`` seen through the atmosphere at depth ``z``."""
        amount = 1.0 - np.exp(-z / self.haze_distance)
        return (colour * (1 - amount) + self.haze_colour * amount).astype(np.float32)

    def paint(
        self,
        top: int,
        left: int,
        mask: np.ndarray,
        label: int,
        colour: np.ndarray,
        instance: int = 0,
        texture: float = 0.06,
    ) -> None:
        """Paint ``mask`` (placed at ``top``, ``left``); a single colour gets ``texture`` times the grain."""
        rows, columns = mask.shape
        region = (slice(top, top + rows), slice(left, left + columns))
        np.copyto(self.labels[region], label, where=mask)
        np.copyto(self.objects[region], instance, where=mask)
        colour = np.asarray(colour, np.float32)
        if colour.ndim == 1:
            colour = colour * (1.0 + texture * self.grain[region])[..., None]
        np.copyto(self.image[region], colour, where=mask[..., None])

    def fill_polygons(
        self,
        polygons: Sequence[Points],
        label: int,
        colour: np.ndarray,
        instance: int = 0,
        texture: float = 0.06,
        lines: Sequence[tuple[Points, float]] = (),
    ) -> None:
        """Fill the union of simple polygons (and thick polylines (points, width px)) with one label."""
        shapes = list(polygons) + [points for points, _ in lines]
        if not shapes:
            return
        all_points = np.concatenate(shapes)
        pad = max([line_width for _, line_width in lines], default=0.0) / 2 + 1
        x0 = max(int(np.floor(all_points[:, 0].min() - pad)), 0)
        x1 = min(int(np.ceil(all_points[:, 0].max() + pad)) + 1, self.width)
        y0 = max(int(np.floor(all_points[:, 1].min() - pad)), 0)
        y1 = min(int(np.ceil(all_points[:, 1].max() + pad)) + 1, self.height)
        if x0 >= x1 or y0 >= y1:
            return
        mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
        offset = np.array([x0, y0], np.float64)
        for polygon in polygons:  # fixed point with 4 fractional bits
            fixed = np.round(np.clip(polygon - offset, -3e4, 3e4) * 16).astype(np.int32)
            cv2.fillPoly(mask, [fixed], 1, cv2.LINE_8, 4)
        for points, line_width in lines:
            fixed = np.round(np.clip(points - offset, -3e4, 3e4) * 16).astype(np.int32)
            cv2.polylines(mask, [fixed], False, 1, max(1, int(round(line_width))), cv2.LINE_8, 4)
        covered = mask.astype(bool)
        if covered.any():
            self.paint(y0, x0, covered, label, colour, instance, texture)

    def side_plane(
        self, camera: Camera, x: float, z0: float, z1: float, y_bottom: float, y_top: float
    ) -> PlanePixels | None:
        """Pixels of the vertical plane X=x, z0<=Z<=z1, y_bottom<=Y<=y_top (None where none is seen)."""
        u0 = camera.vanishing_x + camera.focal * x / z0
        u1 = camera.vanishing_x + camera.focal * x / z1
        col0 = max(int(np.ceil(min(u0, u1))), 0)
        col1 = min(int(np.floor(max(u0, u1))) + 1, self.width)
        columns = np.arange(col0, col1, dtype=np.float64)
        columns = columns[np.abs(columns - camera.vanishing_x) > 0.25]
        if columns.size == 0:
            return None
        col0, col1 = int(columns[0]), int(columns[-1]) + 1
        columns = np.arange(col0, col1, dtype=np.float64)
        offset = columns - camera.vanishing_x
        offset = np.where(np.abs(offset) < 0.25, np.copysign(0.25, x * np.ones_like(offset)), offset)
        depth = np.clip(camera.focal * x / offset, 0.05, 1e6)
        top = camera.horizon_y + camera.focal * (camera.height - y_top) / depth
        bottom = camera.horizon_y + camera.focal * (camera.height - y_bottom) / depth
        row0 = max(int(np.floor(top.min())), 0)
        row1 = min(int(np.ceil(bottom.max())) + 1, self.height)
        if row0 >= row1:
            return None
        rows = np.arange(row0, row1, dtype=np.float64)[:, None]
        mask = (
            (rows >= top[None, :] - 0.5)
            & (rows < bottom[None, :] - 0.5)
            & (depth >= z0)[None, :]
            & (depth <= z1)[None, :]
        )
        if not mask.any():
            return None
        y = camera.height - (rows - camera.horizon_y) * depth[None, :] / camera.focal
        return PlanePixels(row0, col0, mask, depth[None, :].astype(np.float32), y.astype(np.float32))
