"""Street furniture: poles, lamp posts, traffic signs, traffic lights and static objects (bins, bollards)."""

from __future__ import annotations

import numpy as np

from .canvas import Canvas
from .geometry import Camera, ellipse
from .palette import LIGHT, POLE, SIGN, SIGN_SCHEMES, STATIC, STATIC_COLOURS, jitter, pick_colour


def _draw_pole(
    canvas: Canvas, camera: Camera, x: float, z: float, top: float, width: float, colour: np.ndarray
) -> None:
    outline = camera.front(z, [(x - width / 2, 0), (x + width / 2, 0), (x + width / 2, top), (x - width / 2, top)])
    canvas.fill_polygons([outline], POLE, colour, texture=0.05)


def draw_lamp_post(
    canvas: Canvas, rng: np.random.Generator, camera: Camera, x: float, z: float, toward: float, colour: np.ndarray
) -> None:
    """A street lamp whose arm reaches ``toward`` (+1 / -1: the X direction of the road)."""
    top = float(rng.uniform(5.5, 9))
    _draw_pole(canvas, camera, x, z, top, float(rng.uniform(0.12, 0.22)), colour)
    arm = float(rng.uniform(0.8, 2.2)) * toward
    bar = camera.front(z, [(x, top - 0.12), (x + arm, top - 0.12), (x + arm, top), (x, top)])
    head = camera.front(
        z,
        [
            (x + arm - 0.35, top - 0.25),
            (x + arm + 0.35, top - 0.25),
            (x + arm + 0.25, top + 0.05),
            (x + arm - 0.25, top + 0.05),
        ],
    )
    canvas.fill_polygons([bar, head], POLE, colour, texture=0.05)


def _draw_sign(canvas: Canvas, rng: np.random.Generator, camera: Camera, x: float, z: float, y: float) -> None:
    """A sign plate (round, triangular, diamond or rectangular) centred at height ``y``."""
    size = float(rng.uniform(0.45, 0.9))
    shape = rng.integers(4)
    if shape == 0:
        outline = ellipse(x, y, size / 2, vertices=16)
    elif shape == 1:
        outline = np.array([(x - size / 2, y + size * 0.4), (x + size / 2, y + size * 0.4), (x, y - size * 0.45)])
    elif shape == 2:
        outline = np.array([(x, y - size / 2), (x + size / 2, y), (x, y + size / 2), (x - size / 2, y)])
    else:
        plate_width = size * rng.uniform(0.8, 1.8)
        outline = np.array(
            [
                (x - plate_width / 2, y - size / 3),
                (x + plate_width / 2, y - size / 3),
                (x + plate_width / 2, y + size / 3),
                (x - plate_width / 2, y + size / 3),
            ]
        )
    scheme = rng.integers(5)
    rim, face = SIGN_SCHEMES[scheme]
    outer = camera.front(z - 0.02, outline)
    canvas.fill_polygons([outer], SIGN, canvas.hazed(jitter(rng, rim, 12), z), texture=0.05)
    inner = camera.front(z - 0.03, (outline - outline.mean(0)) * 0.7 + outline.mean(0))
    canvas.fill_polygons([inner], SIGN, canvas.hazed(jitter(rng, face, 12), z), texture=0.05)


def draw_sign_post(
    canvas: Canvas, rng: np.random.Generator, camera: Camera, x: float, z: float, colour: np.ndarray
) -> None:
    """A thin post with one or two signs."""
    top = float(rng.uniform(2.3, 3.6))
    _draw_pole(canvas, camera, x, z, top, float(rng.uniform(0.06, 0.12)), colour)
    _draw_sign(canvas, rng, camera, x, z, top - 0.3)
    if rng.random() < 0.35:
        _draw_sign(canvas, rng, camera, x, z, top - 1.0)


def _draw_light_box(
    canvas: Canvas, rng: np.random.Generator, camera: Camera, x: float, z: float, y: float, facing: bool
) -> None:
    """A traffic-light housing from height ``y`` up; ``facing``: its lamps face the camera."""
    box_width, box_height = float(rng.uniform(0.28, 0.4)), float(rng.uniform(0.8, 1.05))
    box = camera.front(
        z - 0.05,
        [
            (x - box_width / 2, y),
            (x + box_width / 2, y),
            (x + box_width / 2, y + box_height),
            (x - box_width / 2, y + box_height),
        ],
    )
    housing = jitter(rng, (40, 42, 40) if rng.random() < 0.75 else (170, 150, 60), 10)
    canvas.fill_polygons([box], LIGHT, canvas.hazed(housing, z), texture=0.05)
    if facing:
        lit = int(rng.integers(3))
        for index, on_colour in enumerate(((230, 40, 30), (240, 180, 30), (60, 220, 90))):
            colour = np.array(on_colour, np.float32) if index == lit else np.array(on_colour, np.float32) * 0.25 + 20
            lamp = camera.front(
                z - 0.06, ellipse(x, y + box_height * (0.8 - 0.3 * index), box_width * 0.3, vertices=10)
            )
            canvas.fill_polygons([lamp], LIGHT, canvas.hazed(colour, z), texture=0.02)


def draw_traffic_light_post(
    canvas: Canvas, rng: np.random.Generator, camera: Camera, x: float, z: float, toward: float, colour: np.ndarray
) -> None:
    """Traffic lights on a post, or hanging from a mast arm reaching ``toward`` over the road."""
    facing = rng.random() < 0.8
    if rng.random() < 0.4:  # mast arm over the road with hanging lights
        top = float(rng.uniform(5, 6.5))
        _draw_pole(canvas, camera, x, z, top, 0.2, colour)
        arm = float(rng.uniform(3, 7)) * toward
        bar = camera.front(z, [(x, top - 0.15), (x + arm, top - 0.1), (x + arm, top), (x, top)])
        canvas.fill_polygons([bar], POLE, colour, texture=0.05)
        for along_arm in (0.6, 0.95) if rng.random() < 0.6 else (0.9,):
            _draw_light_box(canvas, rng, camera, x + arm * along_arm, z, top - 1.1, facing)
        if rng.random() < 0.5:
            _draw_sign(canvas, rng, camera, x + arm * 0.3, z, top - 0.5)
    else:
        top = float(rng.uniform(2.6, 4.0))
        _draw_pole(canvas, camera, x, z, top, float(rng.uniform(0.1, 0.18)), colour)
        _draw_light_box(canvas, rng, camera, x, z, top - 0.2, facing)
        if rng.random() < 0.3:
            _draw_sign(canvas, rng, camera, x, z, top - 1.3)


def draw_static_object(canvas: Canvas, rng: np.random.Generator, camera: Camera, x: float, z: float) -> None:
    """A bin, bollard or utility box (Cityscapes' ``static``)."""
    if rng.random() < 0.5:  # bin
        width, height = float(rng.uniform(0.5, 0.8)), float(rng.uniform(0.8, 1.2))
    else:  # bollard / box
        width, height = float(rng.uniform(0.12, 0.5)), float(rng.uniform(0.6, 1.2))
    outline = camera.front(
        z, [(x - width / 2, 0), (x + width / 2, 0), (x + width / 2, height), (x - width / 2, height)]
    )
    canvas.fill_polygons([outline], STATIC, canvas.hazed(pick_colour(rng, STATIC_COLOURS, 12), z))
