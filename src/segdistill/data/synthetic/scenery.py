"""The sky, the backdrop across the far end of the street, foliage and trees."""

from __future__ import annotations

import cv2
import numpy as np

from .canvas import Canvas
from .geometry import Camera, ellipse
from .palette import BUILDING, BUILDING_COLOURS, SKY, VEGETATION, jitter, pick_colour


def draw_sky(canvas: Canvas, rng: np.random.Generator, camera: Camera) -> np.ndarray:
    """Fill the whole canvas with sky (a gradient with clouds); returns the colour at the horizon."""
    height = canvas.height
    overcast = rng.random()
    top = np.array([70, 120, 190], np.float32) * (1 - overcast) + np.array([150, 158, 168], np.float32) * overcast
    bottom = np.array([175, 198, 222], np.float32) * (1 - overcast) + np.array([200, 205, 210], np.float32) * overcast
    top, bottom = jitter(rng, top, 10), jitter(rng, bottom, 8)
    blend = np.clip(np.arange(height, dtype=np.float32) / max(camera.horizon_y, 1.0), 0, 1)[:, None, None]
    sky = top * (1 - blend) + bottom * blend
    cloud = np.clip(canvas.low_noise * rng.uniform(0.3, 0.8) + rng.uniform(-0.4, 0.4), 0, 1)[..., None]
    cloud_colour = jitter(rng, (225, 228, 232), 10) * rng.uniform(0.8, 1.05)
    sky = sky * (1 - cloud) + cloud_colour * cloud
    canvas.image[:] = sky * (1 + 0.01 * canvas.grain[..., None])
    canvas.labels[:] = SKY
    return bottom


def foliage(canvas: Canvas, region: tuple[slice, slice], colour: np.ndarray) -> np.ndarray:
    """Speckled leaf texture of base ``colour`` for the canvas ``region``."""
    grain = canvas.grain[region]
    speck = 0.62 + 0.32 * grain + 0.12 * canvas.low_noise[region] - 0.3 * (grain > 1.1)
    return colour * np.clip(speck, 0.25, 1.6)[..., None]


def draw_backdrop(
    canvas: Canvas, rng: np.random.Generator, camera: Camera, z_end: float, vegetation_colour: np.ndarray
) -> None:
    """Buildings and tree rows across the far end of the street."""
    x = -z_end * 2.5
    while x < z_end * 2.5:
        block_width = float(rng.uniform(6, 30))
        choice = rng.random()
        if choice < 0.7:
            block_height = float(rng.uniform(5, 35))
            outline = camera.front(
                z_end, [(x, 0), (x + block_width, 0), (x + block_width, block_height), (x, block_height)]
            )
            colour = canvas.hazed(pick_colour(rng, BUILDING_COLOURS, 14), z_end)
            canvas.fill_polygons([outline], BUILDING, colour, texture=0.1)
        elif choice < 0.92:
            crowns = [
                camera.front(z_end - 1, ellipse(x + block_width * t, rng.uniform(3, 9), rng.uniform(2.5, 5)))
                for t in np.linspace(0, 1, 4)
            ]
            crowns.append(camera.front(z_end - 1, [(x, 0), (x + block_width, 0), (x + block_width, 4), (x, 4)]))
            canvas.fill_polygons(crowns, VEGETATION, canvas.hazed(vegetation_colour, z_end), texture=0.3)
        x += block_width


def draw_tree(
    canvas: Canvas, rng: np.random.Generator, camera: Camera, x: float, z: float, vegetation_colour: np.ndarray
) -> None:
    """A tree (trunk and a crown of overlapping blobs) standing at (``x``, ``z``)."""
    trunk_height = float(rng.uniform(1.8, 3.8))
    crown_radius = float(rng.uniform(1.2, 3.2))
    trunk_width = float(rng.uniform(0.15, 0.35))
    trunk = camera.front(
        z,
        [
            (x - trunk_width / 2, 0),
            (x + trunk_width / 2, 0),
            (x + trunk_width / 3, trunk_height + crown_radius),
            (x - trunk_width / 3, trunk_height + crown_radius),
        ],
    )
    canvas.fill_polygons([trunk], VEGETATION, canvas.hazed(jitter(rng, (85, 70, 55), 15), z), texture=0.15)
    crown_y = trunk_height + crown_radius * 0.85
    blobs = [
        camera.front(
            z,
            ellipse(
                x + crown_radius * 0.55 * rng.normal(),
                crown_y + crown_radius * 0.4 * rng.normal(),
                crown_radius * rng.uniform(0.45, 0.8),
            ),
        )
        for _ in range(int(rng.integers(4, 9)))
    ]
    all_points = np.concatenate(blobs)
    x0, y0 = max(int(all_points[:, 0].min()), 0), max(int(all_points[:, 1].min()), 0)
    x1, y1 = min(int(all_points[:, 0].max()) + 2, canvas.width), min(int(all_points[:, 1].max()) + 2, canvas.height)
    if x0 < x1 and y0 < y1:
        colour = foliage(
            canvas, (slice(y0, y1), slice(x0, x1)), canvas.hazed(vegetation_colour * rng.uniform(0.8, 1.15), z)
        )
        mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
        for blob in blobs:
            cv2.fillPoly(mask, [np.round((blob - (x0, y0)) * 16).astype(np.int32)], 1, cv2.LINE_8, 4)
        canvas.paint(y0, x0, mask.astype(bool), VEGETATION, colour)
