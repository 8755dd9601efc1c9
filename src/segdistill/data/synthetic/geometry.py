"""The pinhole street camera and polygon outlines."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Points = np.ndarray  # (N, 2) float64: (X, Y) or (Z, Y) in metres, or (column, row) in pixels once projected

_UNIT_CIRCLES: dict[int, np.ndarray] = {}


def ellipse(
    centre_x: float, centre_y: float, radius_x: float, radius_y: float | None = None, vertices: int = 14
) -> Points:
    """A polygon of ``vertices`` points around an ellipse (a circle when ``radius_y`` is None)."""
    unit = _UNIT_CIRCLES.get(vertices)
    if unit is None:
        angles = np.linspace(0.0, 2 * np.pi, vertices, endpoint=False)
        unit = _UNIT_CIRCLES.setdefault(vertices, np.stack([np.cos(angles), np.sin(angles)], 1))
    return unit * (radius_x, radius_x if radius_y is None else radius_y) + (centre_x, centre_y)


class Camera:
    """Pinhole camera ``height`` metres above a flat ground looking along +Z; image rows grow downward.

    ``focal`` is the focal length in pixels, ``horizon_y`` the image row of the horizon and
    ``vanishing_x`` the image column of the vanishing point (the optical axis).
    """

    def __init__(self, focal: float, height: float, horizon_y: float, vanishing_x: float) -> None:
        self.focal, self.height, self.horizon_y, self.vanishing_x = focal, height, horizon_y, vanishing_x

    def front(self, z: float, points: Sequence[tuple[float, float]] | np.ndarray) -> Points:
        """Project (X, Y) points of the plane at depth ``z``."""
        projected = np.array(points, np.float64)
        projected[:, 0] = self.vanishing_x + self.focal * projected[:, 0] / z
        projected[:, 1] = self.horizon_y + self.focal * (self.height - projected[:, 1]) / z
        return projected

    def side(self, x: float, points: Sequence[tuple[float, float]] | np.ndarray) -> Points:
        """Project (Z, Y) points of the plane at lateral position ``x``."""
        projected = np.array(points, np.float64)
        depth = np.maximum(projected[:, 0], 0.2)
        projected[:, 0] = self.vanishing_x + self.focal * x / depth
        projected[:, 1] = self.horizon_y + self.focal * (self.height - projected[:, 1]) / depth
        return projected
