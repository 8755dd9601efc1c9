"""The Cityscapes label ids the generator paints, its RGB palettes, and colour sampling."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..labels import NAME_TO_ID

EGO = NAME_TO_ID["ego vehicle"]
STATIC = NAME_TO_ID["static"]
ROAD = NAME_TO_ID["road"]
SIDEWALK = NAME_TO_ID["sidewalk"]
BUILDING = NAME_TO_ID["building"]
WALL = NAME_TO_ID["wall"]
FENCE = NAME_TO_ID["fence"]
POLE = NAME_TO_ID["pole"]
LIGHT = NAME_TO_ID["traffic light"]
SIGN = NAME_TO_ID["traffic sign"]
VEGETATION = NAME_TO_ID["vegetation"]
TERRAIN = NAME_TO_ID["terrain"]
SKY = NAME_TO_ID["sky"]
PERSON = NAME_TO_ID["person"]
CAR = NAME_TO_ID["car"]
TRUCK = NAME_TO_ID["truck"]
BUS = NAME_TO_ID["bus"]

Colour = tuple[float, float, float]  # RGB, 0..255

# Palettes (RGB); several deliberately overlap (road/sidewalk, building/wall/fence, vegetation/terrain).
BUILDING_COLOURS: tuple[Colour, ...] = (
    (125, 122, 118),
    (160, 152, 140),
    (188, 180, 165),
    (140, 92, 78),
    (112, 104, 96),
    (205, 198, 186),
    (172, 162, 150),
    (92, 92, 98),
    (152, 140, 112),
    (176, 150, 120),
    (120, 130, 140),
    (150, 112, 95),
)
WALL_COLOURS: tuple[Colour, ...] = BUILDING_COLOURS + ((140, 140, 135), (105, 105, 100), (170, 168, 160))
FENCE_COLOURS: tuple[Colour, ...] = (
    (150, 150, 150),
    (90, 90, 95),
    (60, 72, 62),
    (120, 95, 70),
    (160, 130, 95),
    (45, 60, 50),
    (180, 180, 175),
    (125, 122, 118),
    (140, 92, 78),
)
VEGETATION_COLOURS: tuple[Colour, ...] = (
    (62, 92, 42),
    (78, 108, 52),
    (50, 75, 40),
    (96, 118, 60),
    (110, 120, 70),
    (70, 85, 55),
    (88, 104, 52),
)
TERRAIN_COLOURS: tuple[Colour, ...] = (
    (98, 128, 62),
    (118, 140, 72),
    (140, 132, 86),
    (112, 100, 74),
    (86, 112, 58),
    (125, 120, 80),
    (80, 100, 55),
)
GREEN_TERRAIN_COLOURS = tuple(colour for colour in TERRAIN_COLOURS if colour[1] > colour[0] + 20)
SIDEWALK_COLOURS: tuple[Colour, ...] = (
    (150, 148, 145),
    (170, 165, 158),
    (160, 140, 130),
    (130, 128, 126),
    (180, 172, 160),
    (140, 120, 110),
    (112, 110, 108),
)
CAR_COLOURS: tuple[Colour, ...] = (
    (200, 200, 200),
    (30, 30, 32),
    (120, 120, 125),
    (160, 160, 165),
    (150, 30, 30),
    (30, 50, 110),
    (40, 70, 50),
    (230, 230, 225),
    (90, 90, 95),
    (180, 150, 60),
    (90, 40, 30),
    (60, 60, 64),
)
CLOTH_COLOURS: tuple[Colour, ...] = (
    (30, 30, 35),
    (50, 50, 60),
    (200, 200, 200),
    (120, 30, 30),
    (30, 50, 100),
    (90, 80, 60),
    (150, 150, 155),
    (60, 80, 60),
    (180, 120, 60),
    (200, 60, 80),
    (40, 40, 80),
    (110, 110, 110),
)
SKIN_COLOURS: tuple[Colour, ...] = ((220, 180, 150), (190, 140, 110), (140, 95, 70), (90, 60, 45), (60, 45, 35))
POLE_COLOURS: tuple[Colour, ...] = ((110, 110, 112), (60, 62, 60), (40, 60, 45), (150, 150, 150))
STATIC_COLOURS: tuple[Colour, ...] = ((50, 70, 55), (90, 90, 95), (140, 140, 140), (60, 60, 60))
TRUCK_BOX_COLOURS: tuple[Colour, ...] = ((220, 220, 215), (170, 170, 170), (60, 90, 140), (150, 40, 35))
BUS_COLOURS: tuple[Colour, ...] = ((215, 210, 60), (200, 40, 40), (230, 230, 225), (40, 90, 160), (60, 140, 80))
# traffic-sign (rim, face) colour schemes; the last is the grey back of a sign
SIGN_SCHEMES: tuple[tuple[Colour, Colour], ...] = (
    ((200, 30, 30), (235, 235, 230)),
    ((30, 60, 160), (30, 60, 160)),
    ((230, 190, 30), (230, 190, 30)),
    ((235, 235, 230), (40, 110, 60)),
    ((150, 150, 150), (150, 150, 150)),
)


def jitter(rng: np.random.Generator, colour: Sequence[float], amount: float = 12.0) -> np.ndarray:
    """A colour near ``colour``: mostly a brightness change, a little hue."""
    base = np.asarray(colour, np.float32)
    out = base * (1.0 + rng.normal(0.0, amount / 110.0)) + rng.normal(0.0, amount * 0.35, 3)
    return np.clip(out, 5, 250).astype(np.float32)


def grey(rng: np.random.Generator, value: float, spread: float, chroma: float = 3.0) -> np.ndarray:
    """A grey of brightness ``value`` +- ``spread`` with a slight per-channel tint."""
    level = value + rng.uniform(-spread, spread)
    return np.clip(level + rng.normal(0.0, chroma, 3), 5, 250).astype(np.float32)


def pick_colour(rng: np.random.Generator, palette: Sequence[Colour], amount: float = 12.0) -> np.ndarray:
    """A random palette entry, jittered by ``amount``."""
    return jitter(rng, palette[int(rng.integers(len(palette)))], amount)
