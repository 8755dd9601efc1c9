"""The facade line along each side of the street: buildings, walls, fences and hedges."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .canvas import Canvas
from .geometry import Camera
from .palette import (
    BUILDING,
    BUILDING_COLOURS,
    FENCE,
    FENCE_COLOURS,
    VEGETATION,
    WALL,
    WALL_COLOURS,
    jitter,
    pick_colour,
)
from .scenery import foliage
from .street import StreetSide
from .textures import band, stripes


class SideSurface(NamedTuple):
    """The visible part of a vertical plane parallel to the street, ``x`` metres to the side."""

    top: int
    left: int
    mask: np.ndarray  # h x w bool: the pixels the plane covers
    depth: np.ndarray  # h x w distance along the street (metres)
    y: np.ndarray  # h x w height above the ground (metres)
    region: tuple[slice, slice]  # the plane's box in the image
    footprint_y: np.ndarray  # h x w metres per pixel, vertically
    footprint_z: np.ndarray  # h x w metres per pixel, along the street


def _side_surface(canvas: Canvas, camera: Camera, x: float, z0: float, z1: float, height: float) -> SideSurface | None:
    """The plane from ``z0`` to ``z1``, ``height`` metres tall; ``None`` when none of it is in view."""
    plane = canvas.side_plane(camera, x, z0, z1, 0.0, height)
    if plane is None:
        return None
    top, left, mask, depth, y = plane
    region = (slice(top, top + mask.shape[0]), slice(left, left + mask.shape[1]))
    footprint_y = depth / camera.focal * np.ones_like(y)
    footprint_z = depth**2 / (camera.focal * abs(x))
    return SideSurface(top, left, mask, depth, y, region, footprint_y, footprint_z)


def _draw_building(
    canvas: Canvas,
    rng: np.random.Generator,
    camera: Camera,
    x: float,
    z0: float,
    z1: float,
    height: float,
    light: float,
) -> None:
    surface_plane = _side_surface(canvas, camera, x, z0, z1, height)
    if surface_plane is None:
        return
    top, left, mask, depth, y, region, footprint_y, footprint_z = surface_plane
    base_colour = pick_colour(rng, BUILDING_COLOURS, 14) * light
    along = depth - z0
    floor_height = float(rng.uniform(2.8, 3.6))
    window_spacing = float(rng.uniform(1.6, 3.4))
    window_width, window_height = float(rng.uniform(0.3, 0.65)), float(rng.uniform(0.35, 0.6))  # of the period
    ground_floor = float(rng.uniform(0.0, 3.5))
    windows = stripes(along - rng.uniform(0, window_spacing), window_spacing, window_width, footprint_z) * stripes(
        y - ground_floor - 0.8, floor_height, window_height, footprint_y
    )
    windows = windows * (y > ground_floor) * (y < height - 0.6)
    dark = rng.random() < 0.7
    window_colour = jitter(rng, (45, 50, 60) if dark else (130, 150, 170), 12) * light
    window_variation = 1 + 0.15 * np.clip(canvas.low_noise[region], -1.5, 1.5)
    surface = 1 + rng.uniform(0.02, 0.06) * canvas.grain[region] + rng.uniform(0.0, 0.05) * canvas.low_noise[region]
    colour = base_colour * surface[..., None]
    if rng.random() < 0.3:  # brick / panel courses
        course = float(rng.uniform(0.25, 1.2))
        colour = colour * (1 - rng.uniform(0.06, 0.15) * stripes(y, course, 0.15, footprint_y))[..., None]
    if ground_floor > 2.4 and rng.random() < 0.6:  # shop fronts
        shop = stripes(along, rng.uniform(3, 7), rng.uniform(0.5, 0.85), footprint_z) * band(
            y, 0.3, ground_floor - 0.5, footprint_y
        )
        shop_colour = jitter(rng, (60, 65, 70), 20) * light
        colour = colour * (1 - shop[..., None]) + shop_colour * shop[..., None]
    cornice = band(y, height - 0.45, height, footprint_y)[..., None]
    colour = colour * (1 - 0.25 * cornice)
    colour = colour * (1 - windows[..., None]) + (window_colour * window_variation[..., None]) * windows[..., None]
    colour = colour * (0.85 + 0.15 * np.clip(y / 6.0, 0, 1))[..., None]
    haze = (1 - np.exp(-depth / canvas.haze_distance))[..., None]
    colour = colour * (1 - haze) + canvas.haze_colour * haze
    canvas.paint(top, left, mask, BUILDING, colour)


def _draw_wall(
    canvas: Canvas, rng: np.random.Generator, camera: Camera, x: float, z0: float, z1: float, light: float
) -> None:
    height = float(rng.uniform(0.7, 3.0))
    surface_plane = _side_surface(canvas, camera, x, z0, z1, height)
    if surface_plane is None:
        return
    top, left, mask, depth, y, region, footprint_y, footprint_z = surface_plane
    base_colour = pick_colour(rng, WALL_COLOURS, 14) * light
    colour = (
        base_colour * (1 + rng.uniform(0.03, 0.1) * canvas.grain[region] + 0.06 * canvas.low_noise[region])[..., None]
    )
    if rng.random() < 0.4:  # block courses
        course = float(rng.uniform(0.2, 0.6))
        joints = 1 - (1 - stripes(y, course, 0.12, footprint_y)) * (
            1 - stripes(depth - z0, course * 2, 0.06, footprint_z)
        )
        colour = colour * (1 - 0.2 * joints[..., None])
    coping = band(y, height - 0.12, height, footprint_y)[..., None]
    colour = colour * (1 - coping) + (base_colour * 1.15) * coping
    canvas.paint(top, left, mask, WALL, np.clip(colour, 0, 255))


def _draw_fence(
    canvas: Canvas, rng: np.random.Generator, camera: Camera, x: float, z0: float, z1: float, light: float
) -> None:
    height = float(rng.uniform(0.9, 2.2))
    surface_plane = _side_surface(canvas, camera, x, z0, z1, height)
    if surface_plane is None:
        return
    top, left, mask, depth, y, region, footprint_y, footprint_z = surface_plane
    fence_colour = pick_colour(rng, FENCE_COLOURS, 12) * light
    along = depth - z0
    style = rng.integers(4)
    post_spacing = float(rng.uniform(1.8, 3.0))
    posts = stripes(along, post_spacing, 0.08 / post_spacing, footprint_z) * np.ones_like(y)
    rails = band(y, height - 0.08, height, footprint_y) + band(y, 0.1, 0.18, footprint_y)
    if style == 0:  # mesh
        fill = np.full_like(y, rng.uniform(0.25, 0.5))
    elif style == 1:  # slats / bars
        slat_spacing = float(rng.uniform(0.1, 0.3))
        fill = stripes(along, slat_spacing, rng.uniform(0.3, 0.8), footprint_z) * np.ones_like(y)
    elif style == 2:  # solid panels
        fill = np.full_like(y, 0.95)
    else:  # rails only
        fill = band(y, height * 0.5 - 0.05, height * 0.5 + 0.05, footprint_y)
    alpha = np.clip(np.maximum(np.maximum(posts, rails), fill), 0, 1)[..., None]
    fence = fence_colour * (1 + 0.08 * canvas.grain[region])[..., None]
    colour = canvas.image[region] * (1 - alpha) + fence * alpha
    canvas.paint(top, left, mask, FENCE, colour)


def _draw_hedge(
    canvas: Canvas,
    rng: np.random.Generator,
    camera: Camera,
    x: float,
    z0: float,
    z1: float,
    vegetation_colour: np.ndarray,
) -> None:
    height = float(rng.uniform(0.8, 2.2))
    surface_plane = _side_surface(canvas, camera, x, z0, z1, height + 0.4)
    if surface_plane is None:
        return
    top, left, mask, _, y, region, _, _ = surface_plane
    mask = mask & (y < height + 0.3 * canvas.low_noise[region])
    colour = foliage(canvas, region, vegetation_colour * rng.uniform(0.8, 1.1))
    canvas.paint(top, left, mask, VEGETATION, colour)


def draw_facade_line(
    canvas: Canvas,
    rng: np.random.Generator,
    camera: Camera,
    side: StreetSide,
    z_end: float,
    vegetation_colour: np.ndarray,
    light: float,
    back: bool,
) -> None:
    """The facade line of one side (``back``: a second row of buildings further out)."""
    x = side.facade + side.sign * (rng.uniform(6, 22) if back else 0.0)
    z = 0.3
    while z < z_end:
        if back:
            kind = "building" if rng.random() < 0.85 else "gap"
        elif side.kind == "buildings":
            kind = str(rng.choice(["building", "wall", "fence", "hedge", "gap"], p=[0.64, 0.12, 0.12, 0.06, 0.06]))
        else:
            kind = str(rng.choice(["wall", "fence", "hedge", "gap"], p=[0.15, 0.35, 0.3, 0.2]))
        length = float(rng.uniform(6, 28) if kind == "building" else rng.uniform(4, 20))
        z1 = min(z + length, z_end)
        if kind == "building":
            _draw_building(canvas, rng, camera, x, z, z1, float(rng.uniform(6, 26)), light)
        elif kind == "wall":
            _draw_wall(canvas, rng, camera, x, z, z1, light)
        elif kind == "fence":
            _draw_fence(canvas, rng, camera, x, z, z1, light)
        elif kind == "hedge":
            _draw_hedge(canvas, rng, camera, x, z, z1, vegetation_colour)
        z = z1
