"""Pedestrians: legs, torso and arms, neck, head and hair, sometimes a bag."""

from __future__ import annotations

import numpy as np

from .canvas import Canvas
from .geometry import Camera, ellipse
from .palette import CLOTH_COLOURS, PERSON, SKIN_COLOURS, jitter, pick_colour


def draw_person(canvas: Canvas, rng: np.random.Generator, camera: Camera, x: float, z: float) -> None:
    """A standing or walking person (seen from the front or the side) at (``x``, ``z``); one instance."""
    instance = canvas.new_instance(PERSON)
    height = float(rng.uniform(1.55, 1.95) if rng.random() < 0.88 else rng.uniform(1.0, 1.45))
    scale = height / 1.75
    from_side = rng.random() < 0.5
    stride = float(rng.uniform(0.0, 0.35)) * scale if from_side else 0.0
    hip, shoulder = 0.52 * height, 0.81 * height
    build = float(rng.uniform(0.85, 1.2)) * (0.6 if from_side else 1.0)  # body width factor
    head_radius = 0.07 * height
    top_colour = pick_colour(rng, CLOTH_COLOURS, 15)
    bottom_colour = top_colour if rng.random() < 0.15 else pick_colour(rng, CLOTH_COLOURS, 15)
    skin = pick_colour(rng, SKIN_COLOURS, 8)
    hair = jitter(rng, (35, 28, 22), 10) if rng.random() < 0.8 else jitter(rng, (150, 120, 70), 10)
    legs = (
        [
            camera.front(
                z,
                [
                    (x - 0.05 * scale, hip),
                    (x + 0.05 * scale, hip),
                    (x + stride / 2 + 0.06 * scale, 0),
                    (x + stride / 2 - 0.06 * scale, 0),
                ],
            ),
            camera.front(
                z,
                [
                    (x - 0.05 * scale, hip),
                    (x + 0.05 * scale, hip),
                    (x - stride / 2 + 0.06 * scale, 0),
                    (x - stride / 2 - 0.06 * scale, 0),
                ],
            ),
        ]
        if from_side
        else [
            camera.front(
                z,
                [
                    (x - 0.16 * scale * build, hip),
                    (x - 0.01, hip),
                    (x - 0.04 * scale, 0),
                    (x - 0.15 * scale * build, 0),
                ],
            ),
            camera.front(
                z,
                [
                    (x + 0.01, hip),
                    (x + 0.16 * scale * build, hip),
                    (x + 0.15 * scale * build, 0),
                    (x + 0.04 * scale, 0),
                ],
            ),
        ]
    )
    canvas.fill_polygons(legs, PERSON, canvas.hazed(bottom_colour, z), instance)
    hem = hip - (rng.uniform(0.0, 0.3) * height if rng.random() < 0.3 else 0.0)  # a coat reaches below the hip
    torso = camera.front(
        z,
        [
            (x - 0.2 * scale * build, shoulder),
            (x + 0.2 * scale * build, shoulder),
            (x + 0.17 * scale * build, hem),
            (x - 0.17 * scale * build, hem),
        ],
    )
    swing = float(rng.uniform(-0.12, 0.12)) * scale if from_side else 0.0
    arms = [
        camera.front(
            z,
            [
                (x + side * 0.2 * scale * build, shoulder),
                (x + side * 0.13 * scale * build, shoulder),
                (x + side * 0.16 * scale * build + swing * side, 0.45 * height),
                (x + side * 0.23 * scale * build + swing * side, 0.45 * height),
            ],
        )
        for side in (-1, 1)
    ]
    canvas.fill_polygons([torso] + arms, PERSON, canvas.hazed(top_colour, z), instance)
    neck = camera.front(
        z,
        [
            (x - 0.05 * scale, shoulder - 0.02),
            (x + 0.05 * scale, shoulder - 0.02),
            (x + 0.05 * scale, height - 1.6 * head_radius),
            (x - 0.05 * scale, height - 1.6 * head_radius),
        ],
    )
    head = camera.front(z, ellipse(x, height - head_radius, head_radius * 0.85, head_radius, vertices=12))
    canvas.fill_polygons([neck, head], PERSON, canvas.hazed(skin, z), instance)
    hair_outline = ellipse(x, height - head_radius * 0.7, head_radius * 0.9, head_radius * 0.6, vertices=10)
    canvas.fill_polygons([camera.front(z, hair_outline)], PERSON, canvas.hazed(hair, z), instance)
    if rng.random() < 0.2:  # bag
        bag_x = x + (0.25 if rng.random() < 0.5 else -0.25) * scale
        bag = camera.front(
            z,
            [
                (bag_x - 0.12, 0.4 * height),
                (bag_x + 0.12, 0.4 * height),
                (bag_x + 0.12, 0.58 * height),
                (bag_x - 0.12, 0.58 * height),
            ],
        )
        canvas.fill_polygons([bag], PERSON, canvas.hazed(pick_colour(rng, CLOTH_COLOURS, 15), z), instance)
