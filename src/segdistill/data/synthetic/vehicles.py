"""Vehicles: cars, trucks and buses (one instance each), and the ego vehicle's hood."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .canvas import Canvas
from .geometry import Camera, Points, ellipse
from .palette import BUS, BUS_COLOURS, CAR, CAR_COLOURS, EGO, TRUCK, TRUCK_BOX_COLOURS, jitter, pick_colour


def _side_outline(
    camera: Camera, side_x: float, z: float, length: float, profile: Sequence[tuple[float, float]]
) -> Points:
    """A side-face polygon from (fraction of ``length``, Y) points."""
    return camera.side(side_x, [(z + length * t, y) for t, y in profile])


def _mirrored_pair(
    camera: Camera, z: float, x: float, half: float, inner: float, outer: float, bottom: float, top: float
) -> list[Points]:
    """Two rectangles on the near face at depth ``z``, mirrored about ``x``: from ``half - inner`` to
    ``half - outer`` metres out, ``bottom`` to ``top`` metres high (tyres, lamps)."""
    return [
        camera.front(
            z,
            [
                (x + side * (half - inner), bottom),
                (x + side * (half - outer), bottom),
                (x + side * (half - outer), top),
                (x + side * (half - inner), top),
            ],
        )
        for side in (-1, 1)
    ]


def draw_car(canvas: Canvas, rng: np.random.Generator, camera: Camera, x: float, z: float, toward: bool) -> None:
    """A car whose near face is at depth ``z``; ``toward``: oncoming (its front faces the camera)."""
    instance = canvas.new_instance(CAR)
    width, length, height = float(rng.uniform(1.6, 1.95)), float(rng.uniform(3.8, 4.9)), float(rng.uniform(1.35, 1.7))
    body = canvas.hazed(pick_colour(rng, CAR_COLOURS, 12), z)
    side_colour = body * rng.uniform(0.7, 0.88)
    glass = canvas.hazed(jitter(rng, (40, 45, 55), 10) if rng.random() < 0.7 else jitter(rng, (110, 125, 140), 12), z)
    dark = canvas.hazed(jitter(rng, (25, 25, 27), 5), z)
    belt = 0.95  # the height of the window line
    half = width / 2
    side_x = x - half if x - half > 0.05 else (x + half if x + half < -0.05 else None)  # visible side face
    if camera.focal * width / z < 6.0:  # distant: silhouette only
        if side_x is not None:
            sides = [
                _side_outline(camera, side_x, z, length, [(0, 0.0), (0, belt), (1, belt), (1, 0.0)]),
                _side_outline(camera, side_x, z, length, [(0.22, belt), (0.34, height), (0.78, height), (0.9, belt)]),
            ]
            canvas.fill_polygons(sides, CAR, side_colour, instance)
        near = camera.front(
            z,
            [
                (x - half, 0),
                (x + half, 0),
                (x + half, belt),
                (x + half - 0.08, belt),
                (x + half - 0.22, height),
                (x - half + 0.22, height),
                (x - half + 0.08, belt),
                (x - half, belt),
            ],
        )
        canvas.fill_polygons([near], CAR, body, instance)
        pane = camera.front(
            z,
            [
                (x - half + 0.14, belt + 0.1),
                (x + half - 0.14, belt + 0.1),
                (x + half - 0.26, height - 0.07),
                (x - half + 0.26, height - 0.07),
            ],
        )
        canvas.fill_polygons([pane], CAR, glass, instance, texture=0.03)
        return
    if side_x is not None:
        cabin = (
            [(0.22, belt), (0.34, height), (0.78, height), (0.9, belt)]
            if not toward
            else [(0.1, belt), (0.22, height), (0.66, height), (0.78, belt)]
        )
        lower_side = _side_outline(camera, side_x, z, length, [(0, 0.22), (0, belt), (1, belt), (1, 0.22)])
        canvas.fill_polygons([lower_side], CAR, side_colour, instance)
        canvas.fill_polygons([_side_outline(camera, side_x, z, length, cabin)], CAR, side_colour * 1.05, instance)
        (t0, _), (t1, _), (t2, _), (t3, _) = cabin
        side_window = [
            (t0 + 0.03, belt + 0.05),
            (t1 + 0.02, height - 0.06),
            (t2 - 0.02, height - 0.06),
            (t3 - 0.03, belt + 0.05),
        ]
        canvas.fill_polygons(
            [_side_outline(camera, side_x, z, length, side_window)], CAR, glass, instance, texture=0.03
        )
        wheels = [camera.side(side_x, ellipse(z + length * t, 0.31, 0.31, vertices=12)) for t in (0.18, 0.8)]
        canvas.fill_polygons(wheels, CAR, dark, instance, texture=0.03)
    # near face (rear, or front for oncoming cars)
    lower = camera.front(z, [(x - half, 0.22), (x + half, 0.22), (x + half, belt), (x - half, belt)])
    cab = camera.front(
        z, [(x - half + 0.08, belt), (x + half - 0.08, belt), (x + half - 0.22, height), (x - half + 0.22, height)]
    )
    tyres = _mirrored_pair(camera, z, x, half, 0.08, 0.3, 0, 0.3)
    canvas.fill_polygons(tyres, CAR, dark, instance, texture=0.03)
    canvas.fill_polygons([lower, cab], CAR, body, instance)
    glass_top = height - 0.07
    glass_bottom = belt + (0.05 if toward else 0.12)
    pane = camera.front(
        z,
        [
            (x - half + 0.14, glass_bottom),
            (x + half - 0.14, glass_bottom),
            (x + half - 0.26, glass_top),
            (x - half + 0.26, glass_top),
        ],
    )
    canvas.fill_polygons([pane], CAR, glass, instance, texture=0.03)
    lamp = canvas.hazed(jitter(rng, (215, 215, 200), 10) if toward else jitter(rng, (180, 30, 30), 15), z)
    lamps = _mirrored_pair(camera, z, x, half, 0.04, 0.3, 0.66, 0.8)
    canvas.fill_polygons(lamps, CAR, lamp, instance, texture=0.03)
    bumper = camera.front(z, [(x - half, 0.22), (x + half, 0.22), (x + half, 0.34), (x - half, 0.34)])
    plate = camera.front(z, [(x - 0.26, 0.4), (x + 0.26, 0.4), (x + 0.26, 0.52), (x - 0.26, 0.52)])
    canvas.fill_polygons([bumper], CAR, dark * 1.4, instance, texture=0.03)
    canvas.fill_polygons([plate], CAR, canvas.hazed(jitter(rng, (220, 220, 215), 10), z), instance, texture=0.02)


def _draw_box(
    canvas: Canvas,
    camera: Camera,
    label: int,
    instance: int,
    x: float,
    z: float,
    width: float,
    length: float,
    y0: float,
    y1: float,
    colour: np.ndarray,
    side_colour: np.ndarray,
) -> float | None:
    """A box's visible side face then its near face; returns the side plane's X (None if unseen)."""
    side_x = x - width / 2 if x - width / 2 > 0.05 else (x + width / 2 if x + width / 2 < -0.05 else None)
    if side_x is not None:
        side = camera.side(side_x, [(z, y0), (z, y1), (z + length, y1), (z + length, y0)])
        canvas.fill_polygons([side], label, side_colour, instance)
    near = camera.front(z, [(x - width / 2, y0), (x + width / 2, y0), (x + width / 2, y1), (x - width / 2, y1)])
    canvas.fill_polygons([near], label, colour, instance)
    return side_x


def _draw_wheels(
    canvas: Canvas,
    camera: Camera,
    label: int,
    instance: int,
    side_x: float | None,
    x: float,
    width: float,
    z: float,
    axle_zs: Sequence[float],
    dark: np.ndarray,
) -> None:
    """Wheels on the visible side face at depths ``axle_zs``, and the two tyres seen under the near face."""
    if side_x is not None:
        wheels = [camera.side(side_x, ellipse(axle_z, 0.48, 0.48, vertices=12)) for axle_z in axle_zs]
        canvas.fill_polygons(wheels, label, dark, instance, texture=0.03)
    tyres = _mirrored_pair(camera, z, x, width / 2, 0.05, 0.4, 0, 0.5)
    canvas.fill_polygons(tyres, label, dark, instance, texture=0.03)


def draw_truck(canvas: Canvas, rng: np.random.Generator, camera: Camera, x: float, z: float, toward: bool) -> None:
    """A box truck: a cab and a cargo box (cab first in view when ``toward``)."""
    instance = canvas.new_instance(TRUCK)
    cab_colour = canvas.hazed(pick_colour(rng, CAR_COLOURS, 15), z)
    box_colour = canvas.hazed(pick_colour(rng, TRUCK_BOX_COLOURS, 10), z)
    glass = canvas.hazed(jitter(rng, (40, 45, 55), 10), z)
    dark = canvas.hazed(jitter(rng, (25, 25, 27), 5), z)
    width, cab_length, box_length = 2.45, float(rng.uniform(2.0, 2.5)), float(rng.uniform(4.5, 8.0))
    cab_height, box_height = float(rng.uniform(2.7, 3.1)), float(rng.uniform(3.2, 3.9))
    if toward:  # cab first in view
        side_x = _draw_box(
            canvas,
            camera,
            TRUCK,
            instance,
            x,
            z + cab_length + 0.3,
            width,
            box_length,
            0.9,
            box_height,
            box_colour,
            box_colour * 0.8,
        )
        _draw_wheels(
            canvas,
            camera,
            TRUCK,
            instance,
            side_x,
            x,
            width,
            z + cab_length + 0.3,
            [z + cab_length + box_length - 1.0],
            dark,
        )
        side_x = _draw_box(
            canvas,
            camera,
            TRUCK,
            instance,
            x,
            z,
            width - 0.1,
            cab_length,
            0.45,
            cab_height,
            cab_colour,
            cab_colour * 0.8,
        )
        _draw_wheels(canvas, camera, TRUCK, instance, side_x, x, width, z, [z + 1.1], dark)
        windscreen = camera.front(
            z, [(x - 1.05, 1.7), (x + 1.05, 1.7), (x + 1.0, cab_height - 0.2), (x - 1.0, cab_height - 0.2)]
        )
        canvas.fill_polygons([windscreen], TRUCK, glass, instance, texture=0.03)
        grille = camera.front(z, [(x - 0.8, 0.6), (x + 0.8, 0.6), (x + 0.8, 1.3), (x - 0.8, 1.3)])
        canvas.fill_polygons([grille], TRUCK, dark * 1.6, instance)
    else:
        side_x = _draw_box(
            canvas,
            camera,
            TRUCK,
            instance,
            x,
            z + box_length,
            width - 0.1,
            cab_length,
            0.45,
            cab_height,
            cab_colour,
            cab_colour * 0.8,
        )
        side_x = _draw_box(
            canvas, camera, TRUCK, instance, x, z, width, box_length, 0.9, box_height, box_colour, box_colour * 0.8
        )
        _draw_wheels(canvas, camera, TRUCK, instance, side_x, x, width, z, [z + 1.0, z + box_length + 1.2], dark)
        door = camera.front(
            z, [(x - 0.03, 1.0), (x + 0.03, 1.0), (x + 0.03, box_height - 0.1), (x - 0.03, box_height - 0.1)]
        )
        canvas.fill_polygons([door], TRUCK, box_colour * 0.6, instance)
        lamps = [
            camera.front(
                z,
                [(x + side * 1.15, 0.95), (x + side * 0.9, 0.95), (x + side * 0.9, 1.1), (x + side * 1.15, 1.1)],
            )
            for side in (-1, 1)
        ]
        canvas.fill_polygons(lamps, TRUCK, canvas.hazed(jitter(rng, (180, 30, 30), 15), z), instance)


def draw_bus(canvas: Canvas, rng: np.random.Generator, camera: Camera, x: float, z: float, toward: bool) -> None:
    """A bus with a row of side windows, a windscreen (or rear window) and a destination display."""
    instance = canvas.new_instance(BUS)
    colour = canvas.hazed(pick_colour(rng, BUS_COLOURS, 12), z)
    glass = canvas.hazed(jitter(rng, (35, 40, 50), 8), z)
    dark = canvas.hazed(jitter(rng, (25, 25, 27), 5), z)
    width, length, height = 2.55, float(rng.uniform(10, 12.5)), float(rng.uniform(3.0, 3.4))
    side_x = _draw_box(canvas, camera, BUS, instance, x, z, width, length, 0.3, height, colour, colour * 0.82)
    if side_x is not None:
        n_windows = int(length / 1.5)
        panes = [
            camera.side(
                side_x,
                [
                    (z + 0.9 + i * 1.45, 1.2),
                    (z + 0.9 + i * 1.45, 2.7),
                    (z + 2.15 + i * 1.45, 2.7),
                    (z + 2.15 + i * 1.45, 1.2),
                ],
            )
            for i in range(n_windows - 1)
        ]
        canvas.fill_polygons(panes, BUS, glass, instance, texture=0.03)
    _draw_wheels(canvas, camera, BUS, instance, side_x, x, width, z, [z + 2.3, z + length - 2.6], dark)
    pane_bottom, pane_top = (0.95, height - 0.35) if toward else (1.7, height - 0.3)
    pane = camera.front(
        z, [(x - 1.15, pane_bottom), (x + 1.15, pane_bottom), (x + 1.15, pane_top), (x - 1.15, pane_top)]
    )
    canvas.fill_polygons([pane], BUS, glass, instance, texture=0.03)
    display = camera.front(
        z, [(x - 0.9, height - 0.3), (x + 0.9, height - 0.3), (x + 0.9, height - 0.08), (x - 0.9, height - 0.08)]
    )
    canvas.fill_polygons([display], BUS, canvas.hazed(jitter(rng, (230, 150, 40), 10), z), instance, texture=0.02)


def draw_ego_hood(canvas: Canvas, rng: np.random.Generator) -> None:
    """The ego vehicle's hood across the bottom of the image."""
    height, width = canvas.height, canvas.width
    depth = rng.uniform(0.04, 0.09) * height
    columns = np.arange(width, dtype=np.float32)
    top = height - depth * (1 - 0.5 * ((columns - width / 2) / (width / 2)) ** 2)
    mask = np.arange(height, dtype=np.float32)[:, None] >= top[None, :]
    colour = jitter(rng, (40, 40, 45), 15) * (1 + 0.4 * canvas.low_noise[..., None])
    canvas.paint(0, 0, mask, EGO, colour)
