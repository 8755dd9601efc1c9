"""The street's cross-section (road, verges, sidewalks, strips) and its ground surface."""

from __future__ import annotations

import cv2
import numpy as np

from .canvas import Canvas
from .geometry import Camera
from .palette import ROAD, SIDEWALK, SIDEWALK_COLOURS, TERRAIN, TERRAIN_COLOURS, grey, jitter, pick_colour
from .textures import band, stripes, tileable_noise


class StreetSide:
    """One side of the street: lateral boundaries (signed X, outward from the road) and what stands along it.

    From the road outward: ``road_edge`` (the curb), a terrain verge, the sidewalk from ``sidewalk_near`` to
    ``sidewalk_far``, a terrain strip, the ``facade`` line, and beyond it ``beyond_label`` ground.
    """

    def __init__(self, rng: np.random.Generator, sign: int, road_edge: float) -> None:
        self.sign = sign
        self.road_edge = road_edge
        self.verge_width = float(rng.uniform(0.6, 2.5)) if rng.random() < 0.2 else 0.0
        self.sidewalk_width = float(rng.uniform(1.5, 5.0)) if rng.random() < 0.93 else 0.0
        self.kind = "buildings" if rng.random() < 0.72 else "park"
        self.strip_width = (
            float(rng.uniform(0.8, 6.0)) if rng.random() < (0.35 if self.kind == "buildings" else 0.9) else 0
        )
        self.sidewalk_near = road_edge + sign * self.verge_width
        self.sidewalk_far = self.sidewalk_near + sign * self.sidewalk_width
        self.facade = self.sidewalk_far + sign * self.strip_width
        if self.kind == "park":
            self.beyond_label = TERRAIN
        else:
            self.beyond_label = SIDEWALK if rng.random() < 0.5 else TERRAIN


def draw_ground(
    canvas: Canvas,
    rng: np.random.Generator,
    camera: Camera,
    left: StreetSide,
    right: StreetSide,
    lane_lines: list[float],
    lane_width: float,
    crosswalk: float | None,
    road_colour: np.ndarray,
) -> None:
    """Everything below the horizon: the ground classes, their textures, curbs, markings and shadows."""
    width = canvas.width
    first_row = min(int(np.floor(camera.horizon_y + 0.3)) + 1, canvas.height)
    n_rows = canvas.height - first_row
    if n_rows <= 0:
        return
    grain, low_noise = canvas.grain[first_row:], canvas.low_noise[first_row:]
    rows = np.arange(first_row, canvas.height, dtype=np.float32)[:, None]
    columns = np.arange(width, dtype=np.float32)[None, :]
    below_horizon = np.maximum(rows - camera.horizon_y, 0.3)
    z = (camera.focal * camera.height / below_horizon) * np.ones((1, width), np.float32)
    x = (columns - camera.vanishing_x) * camera.height / below_horizon
    footprint_x = camera.height / below_horizon  # metres per pixel across
    footprint_z = z / below_horizon  # metres per pixel along (per row)

    boundaries = np.array(
        [
            left.facade,
            left.sidewalk_far,
            left.sidewalk_near,
            left.road_edge,
            right.road_edge,
            right.sidewalk_near,
            right.sidewalk_far,
            right.facade,
        ]
    )
    interval_labels = np.array(
        [left.beyond_label, TERRAIN, SIDEWALK, TERRAIN, ROAD, TERRAIN, SIDEWALK, TERRAIN, right.beyond_label], np.uint8
    )
    interval = np.searchsorted(boundaries, x)

    # materials per interval
    same_as_road = rng.random() < 0.35
    sidewalk_left = (
        road_colour * rng.uniform(0.95, 1.15) + rng.normal(0, 4, 3)
        if same_as_road
        else pick_colour(rng, SIDEWALK_COLOURS, 10)
    )
    sidewalk_right = sidewalk_left if rng.random() < 0.8 else pick_colour(rng, SIDEWALK_COLOURS, 10)
    terrain_left = pick_colour(rng, TERRAIN_COLOURS, 12)
    terrain_right = terrain_left if rng.random() < 0.7 else pick_colour(rng, TERRAIN_COLOURS, 12)
    beyond_colours = {SIDEWALK: pick_colour(rng, SIDEWALK_COLOURS, 10), TERRAIN: terrain_right}
    materials = np.stack(
        [
            beyond_colours[left.beyond_label],
            terrain_left,
            sidewalk_left,
            terrain_left,
            road_colour,
            terrain_right,
            sidewalk_right,
            terrain_right,
            beyond_colours[right.beyond_label],
        ]
    )
    grain_amount = np.array([0.1, 0.12, 0.07, 0.12, 0.06, 0.12, 0.07, 0.12, 0.1], np.float32)
    for outer, label in ((0, left.beyond_label), (8, right.beyond_label)):
        grain_amount[outer] = 0.12 if label == TERRAIN else 0.07

    # ground-plane textures (perspective-correct): per-tile values and smooth patches
    tile = float(rng.uniform(0.3, 0.8))
    tile_table = rng.random((64, 64)).astype(np.float32)
    patch_noise = tileable_noise(rng, 8, 64)
    tile_u = np.mod(x / tile, 64.0).astype(np.float32)
    tile_v = np.mod(z / tile, 64.0).astype(np.float32)
    tile_value = cv2.remap(tile_table, tile_u, tile_v, cv2.INTER_NEAREST)
    patch_u = np.mod(x / 0.9, 64.0).astype(np.float32)
    patch_v = np.mod(z / 0.9, 64.0).astype(np.float32)
    patch = cv2.remap(patch_noise, patch_u, patch_v, cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)

    colour = materials[interval] * (1 + grain_amount[interval][..., None] * grain[..., None])
    is_road = interval == 4
    is_sidewalk = (interval == 2) | (interval == 6)
    is_terrain = interval_labels[interval] == TERRAIN
    shade = np.ones((n_rows, width), np.float32)
    shade += np.where(is_road, 0.08 * patch, 0) + np.where(is_terrain, 0.15 * patch + 0.12 * low_noise, 0)
    # sidewalk tiles and curb
    joint_width = 0.04 / tile
    joints = 1 - (1 - stripes(x, tile, joint_width, footprint_x)) * (1 - stripes(z, tile, joint_width, footprint_z))
    tile_shade = 1 - rng.uniform(0.1, 0.3) * joints + rng.uniform(0.0, 0.12) * (tile_value - 0.5)
    shade = np.where(is_sidewalk, shade * tile_shade, shade)
    curb_colour = grey(rng, 170, 20)
    curb = np.zeros((n_rows, width), np.float32)
    for side in (left, right):
        lo, hi = sorted((side.road_edge, side.road_edge + side.sign * 0.22))
        curb += band(x, lo, hi, footprint_x)
    curb = np.clip(curb * (~is_road), 0, 1)[..., None]
    colour = colour * shade[..., None]
    colour = colour * (1 - curb) + curb_colour * curb

    # road markings
    paint_colour = grey(rng, 205, 25) if rng.random() < 0.85 else jitter(rng, (215, 180, 60), 10)
    marking = np.zeros((n_rows, width), np.float32)
    dash_length, dash_gap = float(rng.uniform(2, 4)), float(rng.uniform(4, 9))
    wear = float(rng.uniform(0.55, 1.0))
    for lane_line in lane_lines:
        marking += band(x, lane_line - 0.07, lane_line + 0.07, footprint_x) * stripes(
            z + 3.0, dash_length + dash_gap, dash_length / (dash_length + dash_gap), footprint_z
        )
    if rng.random() < 0.6:
        for edge_line in (left.road_edge + 0.3, right.road_edge - 0.3):
            marking += band(x, edge_line - 0.07, edge_line + 0.07, footprint_x)
    if crosswalk is not None:
        marking += band(z, crosswalk, crosswalk + 3.5, footprint_z) * stripes(x + 0.25, 1.0, 0.5, footprint_x)
    marking = np.clip(marking * is_road * wear * (0.85 + 0.15 * grain), 0, 1)[..., None]
    colour = colour * (1 - marking) + paint_colour * marking

    # shadows cast on the ground (image only)
    if rng.random() < 0.55:  # a straight shadow edge along the street
        direction = 1 if rng.random() < 0.5 else -1
        offset = float(rng.uniform(-lane_width, 2 * lane_width))
        slope = float(rng.uniform(-0.15, 0.15))
        shadow = np.clip((direction * x - (offset + slope * z)) / np.maximum(0.6, footprint_x), 0, 1)
        colour = colour * (1 - rng.uniform(0.3, 0.55) * shadow)[..., None]
    if rng.random() < 0.35:  # a band across the street
        shadow_z = float(rng.uniform(5, 30))
        shadow = band(z, shadow_z, shadow_z + rng.uniform(2, 8), footprint_z) * np.clip(0.7 + 0.6 * low_noise, 0, 1)
        colour = colour * (1 - rng.uniform(0.25, 0.5) * shadow)[..., None]

    canvas.image[first_row:] = colour
    canvas.labels[first_row:] = interval_labels[interval]
    canvas.objects[first_row:] = 0
