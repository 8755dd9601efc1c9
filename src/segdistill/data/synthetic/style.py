"""Visual styles of the generated cities: the colour of each class, the light and the object mix.

``default`` is the embedded default dataset, byte for byte (every knob at the value the generator has always
used, and no recolouring pass). ``dusk`` is the held-out style: a harbour town at dusk, with brick and
sandstone facades, autumn vegetation, a darker bluish road, an orange sky, low warm light with a strong
vignette and more sensor noise, and busier streets (more people, buses and trucks, fewer parked cars, wider
roads). A model trained on one style and evaluated on the other meets another palette, other light and
another object mix: what a second real dataset would change.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...errors import UserError
from .palette import BUILDING, BUS, CAR, FENCE, ROAD, SIDEWALK, SKY, TERRAIN, TRUCK, VEGETATION, WALL

Tint = tuple[tuple[float, float, float], tuple[float, float, float]]  # per-channel gain, offset (RGB, 0..255)


@dataclass(frozen=True)
class Style:
    """The knobs a style sets. Object mix: ``lanes`` (choices, drawn uniformly), ``parking_chance`` (a kerb lane
    holds parked cars), ``vehicle_thresholds`` (a moving vehicle is a truck below the first, a bus below the
    second, a car below the third, else a gap), ``people_rate`` / ``crowd_chance`` / ``crowd_rate`` (Poisson
    counts). Palette: ``tints`` (label id -> gain and offset applied to that class's painted pixels before the
    light). Light: ``exposure`` and ``gamma`` ranges, ``cast`` (RGB gain on the random colour cast),
    ``vignette`` (its largest strength) and ``noise`` (sensor noise sigma range)."""

    name: str
    lanes: tuple[int, ...] = (1, 2, 2, 3, 4)
    parking_chance: float = 0.45
    vehicle_thresholds: tuple[float, float, float] = (0.06, 0.11, 0.75)
    people_rate: float = 4.5
    crowd_chance: float = 0.3
    crowd_rate: float = 5.0
    tints: dict[int, Tint] = field(default_factory=dict)
    exposure: tuple[float, float] = (0.7, 1.2)
    gamma: tuple[float, float] = (0.85, 1.2)
    cast: tuple[float, float, float] = (1.0, 1.0, 1.0)
    vignette: float = 0.25
    noise: tuple[float, float] = (1.0, 3.5)

    def recolour(self, image: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """``image H x W x 3`` (float32, 0..255) with each tinted class's pixels recoloured (``labels H x W``)."""
        if not self.tints:
            return image
        out = image.copy()
        for label, (gain, offset) in self.tints.items():
            where = labels == label
            out[where] = out[where] * np.asarray(gain, np.float32) + np.asarray(offset, np.float32)
        return np.clip(out, 0, 255)


DEFAULT = Style("default")
DUSK = Style(
    "dusk",
    lanes=(2, 3, 3, 4),
    parking_chance=0.25,
    vehicle_thresholds=(0.14, 0.28, 0.8),
    people_rate=7.0,
    crowd_chance=0.5,
    crowd_rate=6.0,
    tints={
        BUILDING: ((1.18, 0.9, 0.74), (8.0, 0.0, -4.0)),  # brick and sandstone
        WALL: ((1.12, 0.94, 0.8), (4.0, 0.0, 0.0)),
        FENCE: ((0.85, 0.85, 0.95), (0.0, 0.0, 6.0)),
        VEGETATION: ((1.35, 0.92, 0.55), (10.0, 0.0, 0.0)),  # autumn
        TERRAIN: ((1.2, 0.95, 0.7), (6.0, 0.0, 0.0)),
        ROAD: ((0.78, 0.82, 0.95), (0.0, 0.0, 8.0)),  # dark, bluish asphalt
        SIDEWALK: ((1.05, 0.95, 0.85), (0.0, 0.0, 0.0)),
        SKY: ((1.25, 0.82, 0.55), (20.0, 0.0, 0.0)),  # orange dusk sky
        CAR: ((1.1, 1.0, 0.9), (0.0, 0.0, 0.0)),
        BUS: ((1.05, 1.0, 0.85), (0.0, 0.0, 0.0)),
        TRUCK: ((1.05, 1.0, 0.85), (0.0, 0.0, 0.0)),
    },
    exposure=(0.55, 0.9),
    gamma=(1.0, 1.35),
    cast=(1.1, 0.97, 0.8),
    vignette=0.45,
    noise=(2.5, 5.0),
)
STYLES: dict[str, Style] = {style.name: style for style in (DEFAULT, DUSK)}


def get_style(name: str) -> Style:
    """The style called ``name``; an unknown name is one line listing the known ones."""
    if name not in STYLES:
        raise UserError(f"unknown synthetic style {name!r}; known: {', '.join(STYLES)}")
    return STYLES[name]
