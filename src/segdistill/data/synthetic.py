"""Procedural street scenes written in the Cityscapes layout with Cityscapes label ids.

The project's embedded default dataset: ``generate_dataset`` renders scenes with a pinhole camera over
a flat street (road, sidewalks, facades, walls, fences, vegetation, poles, signs, lights, people and
vehicles) and writes ``leftImg8bit`` / ``gtFine`` files that a Cityscapes loader reads unchanged.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from segdistill.data.labels import NAME_TO_ID

DEFAULT_HEIGHT = 128
DEFAULT_WIDTH = 256
DEFAULT_TRAIN = 800
DEFAULT_VAL = 200
# the generator parameters recorded in synth.json, at their defaults (the embedded default dataset)
DEFAULT_PARAMS = {
    "seed": 0,
    "height": DEFAULT_HEIGHT,
    "width": DEFAULT_WIDTH,
    "train": DEFAULT_TRAIN,
    "val": DEFAULT_VAL,
}
TRAIN_CITIES = ("alderford", "brackenmoor", "corrinvale")
VAL_CITIES = ("dunmere", "elsworth")

_FORMAT_VERSION = 1
_FRAME = 19  # Cityscapes' annotated frame number

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

_Pts = np.ndarray
_Col = tuple[float, float, float]

# Palettes (RGB); several deliberately overlap (road/sidewalk, building/wall/fence, vegetation/terrain).
_BUILDING_COLS: tuple[_Col, ...] = (
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
_WALL_COLS: tuple[_Col, ...] = _BUILDING_COLS + ((140, 140, 135), (105, 105, 100), (170, 168, 160))
_FENCE_COLS: tuple[_Col, ...] = (
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
_VEG_COLS: tuple[_Col, ...] = (
    (62, 92, 42),
    (78, 108, 52),
    (50, 75, 40),
    (96, 118, 60),
    (110, 120, 70),
    (70, 85, 55),
    (88, 104, 52),
)
_TERRAIN_COLS: tuple[_Col, ...] = (
    (98, 128, 62),
    (118, 140, 72),
    (140, 132, 86),
    (112, 100, 74),
    (86, 112, 58),
    (125, 120, 80),
    (80, 100, 55),
)
_GREEN_TERRAIN_COLS = tuple(c for c in _TERRAIN_COLS if c[1] > c[0] + 20)
_SIDEWALK_COLS: tuple[_Col, ...] = (
    (150, 148, 145),
    (170, 165, 158),
    (160, 140, 130),
    (130, 128, 126),
    (180, 172, 160),
    (140, 120, 110),
    (112, 110, 108),
)
_CAR_COLS: tuple[_Col, ...] = (
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
_CLOTH_COLS: tuple[_Col, ...] = (
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
_SKIN_COLS: tuple[_Col, ...] = ((220, 180, 150), (190, 140, 110), (140, 95, 70), (90, 60, 45), (60, 45, 35))


# --------------------------------------------------------------------------------------------- helpers
def _noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Smooth unit-variance noise with features about ``cell`` pixels wide."""
    gh, gw = h // cell + 3, w // cell + 3
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    up = cv2.resize(grid, (gw * cell, gh * cell), interpolation=cv2.INTER_CUBIC)[cell : cell + h, cell : cell + w]
    return up / (float(up.std()) + 1e-6)


def _stripe(c: np.ndarray, period: float, duty: float, fp: np.ndarray | float) -> np.ndarray:
    """Box-filtered coverage of a square wave (on for the first ``duty`` of each period) over a footprint."""
    fp = np.maximum(fp, 1e-3)
    on = duty * period

    def integral(x: np.ndarray) -> np.ndarray:
        q = np.floor(x / period)
        return q * on + np.minimum(x - q * period, on)

    return np.clip((integral(c + fp / 2) - integral(c - fp / 2)) / fp, 0.0, 1.0)


def _band(c: np.ndarray, lo: float, hi: float, fp: np.ndarray | float) -> np.ndarray:
    """Box-filtered coverage of the interval [lo, hi] over a footprint centred at ``c``."""
    fp = np.maximum(fp, 1e-3)
    return np.clip((np.minimum(c + fp / 2, hi) - np.maximum(c - fp / 2, lo)) / fp, 0.0, 1.0)


def _jitter(rng: np.random.Generator, col: Sequence[float], amount: float = 12.0) -> np.ndarray:
    """A colour near ``col``: mostly a brightness change, a little hue."""
    base = np.asarray(col, np.float32)
    out = base * (1.0 + rng.normal(0.0, amount / 110.0)) + rng.normal(0.0, amount * 0.35, 3)
    return np.clip(out, 5, 250).astype(np.float32)


def _grey(rng: np.random.Generator, value: float, spread: float, chroma: float = 3.0) -> np.ndarray:
    v = value + rng.uniform(-spread, spread)
    return np.clip(v + rng.normal(0.0, chroma, 3), 5, 250).astype(np.float32)


def _tileable(rng: np.random.Generator, cells: int, size: int) -> np.ndarray:
    """Smooth unit-variance noise of ``size`` x ``size`` that tiles seamlessly."""
    grid = np.tile(rng.standard_normal((cells, cells)).astype(np.float32), (3, 3))
    up = cv2.resize(grid, (3 * size, 3 * size), interpolation=cv2.INTER_CUBIC)[size : 2 * size, size : 2 * size]
    return up / (float(up.std()) + 1e-6)


def _pick(rng: np.random.Generator, cols: Sequence[_Col], amount: float = 12.0) -> np.ndarray:
    return _jitter(rng, cols[int(rng.integers(len(cols)))], amount)


_UNIT_CIRCLES: dict[int, np.ndarray] = {}


def _circle(cx: float, cy: float, rx: float, ry: float | None = None, n: int = 14) -> _Pts:
    unit = _UNIT_CIRCLES.get(n)
    if unit is None:
        t = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
        unit = _UNIT_CIRCLES.setdefault(n, np.stack([np.cos(t), np.sin(t)], 1))
    return unit * (rx, rx if ry is None else ry) + (cx, cy)


class _Cam:
    """Pinhole camera at height ``hc`` looking along +Z over a flat ground; image rows grow downward."""

    def __init__(self, f: float, hc: float, yh: float, xv: float) -> None:
        self.f, self.hc, self.yh, self.xv = f, hc, yh, xv

    def front(self, z: float, pts: Sequence[tuple[float, float]] | np.ndarray) -> _Pts:
        """Project (X, Y) points of the plane at depth ``z``."""
        p = np.array(pts, np.float64)
        p[:, 0] = self.xv + self.f * p[:, 0] / z
        p[:, 1] = self.yh + self.f * (self.hc - p[:, 1]) / z
        return p

    def side(self, x: float, pts: Sequence[tuple[float, float]] | np.ndarray) -> _Pts:
        """Project (Z, Y) points of the plane at lateral position ``x``."""
        p = np.array(pts, np.float64)
        z = np.maximum(p[:, 0], 0.2)
        p[:, 0] = self.xv + self.f * x / z
        p[:, 1] = self.yh + self.f * (self.hc - p[:, 1]) / z
        return p


class _Canvas:
    """Image, labelIds and per-pixel object index, painted back to front."""

    def __init__(self, rng: np.random.Generator, h: int, w: int) -> None:
        self.h, self.w = h, w
        self.img = np.zeros((h, w, 3), np.float32)
        self.lab = np.zeros((h, w), np.uint8)
        self.obj = np.zeros((h, w), np.int32)
        self.obj_label: list[int] = [0]
        self.grain = (0.5 * rng.standard_normal((h, w)) + 0.85 * _noise(rng, h, w, 3)).astype(np.float32)
        self.low = _noise(rng, h, w, 14)
        self.haze_col = np.zeros(3, np.float32)
        self.haze_dist = 1e9

    def instance(self, label: int) -> int:
        self.obj_label.append(label)
        return len(self.obj_label) - 1

    def hazed(self, col: np.ndarray, z: float) -> np.ndarray:
        a = 1.0 - np.exp(-z / self.haze_dist)
        return (col * (1 - a) + self.haze_col * a).astype(np.float32)

    def paint(
        self, y0: int, x0: int, m: np.ndarray, label: int, color: np.ndarray, obj: int = 0, tex: float = 0.06
    ) -> None:
        h, w = m.shape
        sl = (slice(y0, y0 + h), slice(x0, x0 + w))
        np.copyto(self.lab[sl], label, where=m)
        np.copyto(self.obj[sl], obj, where=m)
        color = np.asarray(color, np.float32)
        if color.ndim == 1:
            color = color * (1.0 + tex * self.grain[sl])[..., None]
        np.copyto(self.img[sl], color, where=m[..., None])

    def polys(
        self,
        polys: Sequence[_Pts],
        label: int,
        color: np.ndarray,
        obj: int = 0,
        tex: float = 0.06,
        lines: Sequence[tuple[_Pts, float]] = (),
    ) -> None:
        """Fill the union of simple polygons (and thick polylines (points, width px)) with one label."""
        shapes = list(polys) + [p for p, _ in lines]
        if not shapes:
            return
        allp = np.concatenate(shapes)
        pad = max([wd for _, wd in lines], default=0.0) / 2 + 1
        x0 = max(int(np.floor(allp[:, 0].min() - pad)), 0)
        x1 = min(int(np.ceil(allp[:, 0].max() + pad)) + 1, self.w)
        y0 = max(int(np.floor(allp[:, 1].min() - pad)), 0)
        y1 = min(int(np.ceil(allp[:, 1].max() + pad)) + 1, self.h)
        if x0 >= x1 or y0 >= y1:
            return
        mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
        off = np.array([x0, y0], np.float64)
        for p in polys:
            q = np.round(np.clip(p - off, -3e4, 3e4) * 16).astype(np.int32)
            cv2.fillPoly(mask, [q], 1, cv2.LINE_8, 4)
        for p, wd in lines:
            q = np.round(np.clip(p - off, -3e4, 3e4) * 16).astype(np.int32)
            cv2.polylines(mask, [q], False, 1, max(1, int(round(wd))), cv2.LINE_8, 4)
        m = mask.astype(bool)
        if m.any():
            self.paint(y0, x0, m, label, color, obj, tex)

    def side_plane(
        self, cam: _Cam, x: float, z0: float, z1: float, ya: float, yb: float
    ) -> tuple[int, int, np.ndarray, np.ndarray, np.ndarray] | None:
        """Pixels of the vertical plane X=x, z0<=Z<=z1, ya<=Y<=yb: (y0, x0, mask, Z per column, Y map)."""
        ua, ub = cam.xv + cam.f * x / z0, cam.xv + cam.f * x / z1
        j0 = max(int(np.ceil(min(ua, ub))), 0)
        j1 = min(int(np.floor(max(ua, ub))) + 1, self.w)
        cols = np.arange(j0, j1, dtype=np.float64)
        cols = cols[np.abs(cols - cam.xv) > 0.25]
        if cols.size == 0:
            return None
        j0, j1 = int(cols[0]), int(cols[-1]) + 1
        cols = np.arange(j0, j1, dtype=np.float64)
        den = cols - cam.xv
        den = np.where(np.abs(den) < 0.25, np.copysign(0.25, x * np.ones_like(den)), den)
        zc = np.clip(cam.f * x / den, 0.05, 1e6)
        top = cam.yh + cam.f * (cam.hc - yb) / zc
        bot = cam.yh + cam.f * (cam.hc - ya) / zc
        i0 = max(int(np.floor(top.min())), 0)
        i1 = min(int(np.ceil(bot.max())) + 1, self.h)
        if i0 >= i1:
            return None
        rows = np.arange(i0, i1, dtype=np.float64)[:, None]
        m = (rows >= top[None, :] - 0.5) & (rows < bot[None, :] - 0.5) & (zc >= z0)[None, :] & (zc <= z1)[None, :]
        if not m.any():
            return None
        ymap = cam.hc - (rows - cam.yh) * zc[None, :] / cam.f
        return i0, j0, m, zc[None, :].astype(np.float32), ymap.astype(np.float32)


# ----------------------------------------------------------------------------------------- the street
class _Side:
    """One side of the street: lateral boundaries (signed X) and what stands along it."""

    def __init__(self, rng: np.random.Generator, sign: int, edge: float) -> None:
        self.sign = sign
        self.edge = edge
        self.verge = float(rng.uniform(0.6, 2.5)) if rng.random() < 0.2 else 0.0
        self.sw = float(rng.uniform(1.5, 5.0)) if rng.random() < 0.93 else 0.0
        self.kind = "buildings" if rng.random() < 0.72 else "park"
        self.strip = float(rng.uniform(0.8, 6.0)) if rng.random() < (0.35 if self.kind == "buildings" else 0.9) else 0
        self.e1 = edge + sign * self.verge
        self.e2 = self.e1 + sign * self.sw
        self.facade = self.e2 + sign * self.strip
        if self.kind == "park":
            self.beyond = TERRAIN
        else:
            self.beyond = SIDEWALK if rng.random() < 0.5 else TERRAIN


def _sky(cv: _Canvas, rng: np.random.Generator, cam: _Cam) -> np.ndarray:
    h = cv.h
    overcast = rng.random()
    top = np.array([70, 120, 190], np.float32) * (1 - overcast) + np.array([150, 158, 168], np.float32) * overcast
    bottom = np.array([175, 198, 222], np.float32) * (1 - overcast) + np.array([200, 205, 210], np.float32) * overcast
    top, bottom = _jitter(rng, top, 10), _jitter(rng, bottom, 8)
    t = np.clip(np.arange(h, dtype=np.float32) / max(cam.yh, 1.0), 0, 1)[:, None, None]
    sky = top * (1 - t) + bottom * t
    cloud = np.clip(cv.low * rng.uniform(0.3, 0.8) + rng.uniform(-0.4, 0.4), 0, 1)[..., None]
    cloud_col = _jitter(rng, (225, 228, 232), 10) * rng.uniform(0.8, 1.05)
    sky = sky * (1 - cloud) + cloud_col * cloud
    cv.img[:] = sky * (1 + 0.01 * cv.grain[..., None])
    cv.lab[:] = SKY
    return bottom


def _ground(
    cv: _Canvas,
    rng: np.random.Generator,
    cam: _Cam,
    left: _Side,
    right: _Side,
    lanes: list[float],
    lane_w: float,
    crosswalk: float | None,
    road_col: np.ndarray,
) -> None:
    w = cv.w
    r0 = min(int(np.floor(cam.yh + 0.3)) + 1, cv.h)
    h = cv.h - r0
    if h <= 0:
        return
    grain, low = cv.grain[r0:], cv.low[r0:]
    rows = np.arange(r0, cv.h, dtype=np.float32)[:, None]
    cols = np.arange(w, dtype=np.float32)[None, :]
    dy = np.maximum(rows - cam.yh, 0.3)
    z = (cam.f * cam.hc / dy) * np.ones((1, w), np.float32)
    x = (cols - cam.xv) * cam.hc / dy
    fpx = cam.hc / dy  # metres per pixel across
    fpz = z / dy  # metres per pixel along (per row)

    breaks = np.array([left.facade, left.e2, left.e1, left.edge, right.edge, right.e1, right.e2, right.facade])
    classes = np.array(
        [left.beyond, TERRAIN, SIDEWALK, TERRAIN, ROAD, TERRAIN, SIDEWALK, TERRAIN, right.beyond], np.uint8
    )
    idx = np.searchsorted(breaks, x)

    # materials per interval
    same = rng.random() < 0.35
    sw_l = road_col * rng.uniform(0.95, 1.15) + rng.normal(0, 4, 3) if same else _pick(rng, _SIDEWALK_COLS, 10)
    sw_r = sw_l if rng.random() < 0.8 else _pick(rng, _SIDEWALK_COLS, 10)
    ter = _pick(rng, _TERRAIN_COLS, 12)
    ter2 = ter if rng.random() < 0.7 else _pick(rng, _TERRAIN_COLS, 12)
    beyond_col = {SIDEWALK: _pick(rng, _SIDEWALK_COLS, 10), TERRAIN: ter2}
    mats = np.stack([beyond_col[left.beyond], ter, sw_l, ter, road_col, ter2, sw_r, ter2, beyond_col[right.beyond]])
    amp = np.array([0.1, 0.12, 0.07, 0.12, 0.06, 0.12, 0.07, 0.12, 0.1], np.float32)
    for k, c in ((0, left.beyond), (8, right.beyond)):
        amp[k] = 0.12 if c == TERRAIN else 0.07

    # ground-plane textures (perspective-correct): per-tile values and smooth patches
    tile = float(rng.uniform(0.3, 0.8))
    table = rng.random((64, 64)).astype(np.float32)
    smooth = _tileable(rng, 8, 64)
    mx = np.mod(x / tile, 64.0).astype(np.float32)
    my = np.mod(z / tile, 64.0).astype(np.float32)
    tile_val = cv2.remap(table, mx, my, cv2.INTER_NEAREST)
    px = np.mod(x / 0.9, 64.0).astype(np.float32)
    pz = np.mod(z / 0.9, 64.0).astype(np.float32)
    patch = cv2.remap(smooth, px, pz, cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)

    col = mats[idx] * (1 + amp[idx][..., None] * grain[..., None])
    is_road = idx == 4
    is_sw = (idx == 2) | (idx == 6)
    is_ter = classes[idx] == TERRAIN
    shade = np.ones((h, w), np.float32)
    shade += np.where(is_road, 0.08 * patch, 0) + np.where(is_ter, 0.15 * patch + 0.12 * low, 0)
    # sidewalk tiles and curb
    lw = 0.04 / tile
    line = 1 - (1 - _stripe(x, tile, lw, fpx)) * (1 - _stripe(z, tile, lw, fpz))
    tiles = 1 - rng.uniform(0.1, 0.3) * line + rng.uniform(0.0, 0.12) * (tile_val - 0.5)
    shade = np.where(is_sw, shade * tiles, shade)
    curb_col = _grey(rng, 170, 20)
    curb = np.zeros((h, w), np.float32)
    for s in (left, right):
        lo, hi = sorted((s.edge, s.edge + s.sign * 0.22))
        curb += _band(x, lo, hi, fpx)
    curb = np.clip(curb * (~is_road), 0, 1)[..., None]
    col = col * shade[..., None]
    col = col * (1 - curb) + curb_col * curb

    # road markings
    paint_col = _grey(rng, 205, 25) if rng.random() < 0.85 else _jitter(rng, (215, 180, 60), 10)
    mark = np.zeros((h, w), np.float32)
    dash_len, dash_gap = float(rng.uniform(2, 4)), float(rng.uniform(4, 9))
    wear = float(rng.uniform(0.55, 1.0))
    for b in lanes:
        mark += _band(x, b - 0.07, b + 0.07, fpx) * _stripe(
            z + 3.0, dash_len + dash_gap, dash_len / (dash_len + dash_gap), fpz
        )
    if rng.random() < 0.6:
        for e in (left.edge + 0.3, right.edge - 0.3):
            mark += _band(x, e - 0.07, e + 0.07, fpx)
    if crosswalk is not None:
        mark += _band(z, crosswalk, crosswalk + 3.5, fpz) * _stripe(x + 0.25, 1.0, 0.5, fpx)
    mark = np.clip(mark * is_road * wear * (0.85 + 0.15 * grain), 0, 1)[..., None]
    col = col * (1 - mark) + paint_col * mark

    # shadows cast on the ground (image only)
    if rng.random() < 0.55:
        s = 1 if rng.random() < 0.5 else -1
        a = float(rng.uniform(-lane_w, 2 * lane_w))
        b = float(rng.uniform(-0.15, 0.15))
        sh = np.clip((s * x - (a + b * z)) / np.maximum(0.6, fpx), 0, 1)
        col = col * (1 - rng.uniform(0.3, 0.55) * sh)[..., None]
    if rng.random() < 0.35:
        z0 = float(rng.uniform(5, 30))
        sh = _band(z, z0, z0 + rng.uniform(2, 8), fpz) * np.clip(0.7 + 0.6 * low, 0, 1)
        col = col * (1 - rng.uniform(0.25, 0.5) * sh)[..., None]

    cv.img[r0:] = col
    cv.lab[r0:] = classes[idx]
    cv.obj[r0:] = 0


def _facade_building(
    cv: _Canvas,
    rng: np.random.Generator,
    cam: _Cam,
    x: float,
    z0: float,
    z1: float,
    height: float,
    light: float,
) -> None:
    res = cv.side_plane(cam, x, z0, z1, 0.0, height)
    if res is None:
        return
    i0, j0, m, zc, y = res
    base = _pick(rng, _BUILDING_COLS, 14) * light
    zr = zc - z0
    fpz = zc**2 / (cam.f * abs(x))
    fpy = zc / cam.f * np.ones_like(y)
    floor_h = float(rng.uniform(2.8, 3.6))
    spacing = float(rng.uniform(1.6, 3.4))
    wfrac, hfrac = float(rng.uniform(0.3, 0.65)), float(rng.uniform(0.35, 0.6))
    ground_h = float(rng.uniform(0.0, 3.5))
    win = _stripe(zr - rng.uniform(0, spacing), spacing, wfrac, fpz) * _stripe(y - ground_h - 0.8, floor_h, hfrac, fpy)
    win = win * (y > ground_h) * (y < height - 0.6)
    dark = rng.random() < 0.7
    win_col = _jitter(rng, (45, 50, 60) if dark else (130, 150, 170), 12) * light
    sl = (slice(i0, i0 + m.shape[0]), slice(j0, j0 + m.shape[1]))
    win_var = 1 + 0.15 * np.clip(cv.low[sl], -1.5, 1.5)
    col = base * (1 + rng.uniform(0.02, 0.06) * cv.grain[sl] + rng.uniform(0.0, 0.05) * cv.low[sl])[..., None]
    if rng.random() < 0.3:  # brick / panel courses
        course = float(rng.uniform(0.25, 1.2))
        col = col * (1 - rng.uniform(0.06, 0.15) * _stripe(y, course, 0.15, fpy))[..., None]
    if ground_h > 2.4 and rng.random() < 0.6:  # shop fronts
        shop = _stripe(zr, rng.uniform(3, 7), rng.uniform(0.5, 0.85), fpz) * _band(y, 0.3, ground_h - 0.5, fpy)
        shop_col = _jitter(rng, (60, 65, 70), 20) * light
        col = col * (1 - shop[..., None]) + shop_col * shop[..., None]
    cornice = _band(y, height - 0.45, height, fpy)[..., None]
    col = col * (1 - 0.25 * cornice)
    col = col * (1 - win[..., None]) + (win_col * win_var[..., None]) * win[..., None]
    col = col * (0.85 + 0.15 * np.clip(y / 6.0, 0, 1))[..., None]
    a = (1 - np.exp(-zc / cv.haze_dist))[..., None]
    col = col * (1 - a) + cv.haze_col * a
    cv.paint(i0, j0, m, BUILDING, col)


def _facade_wall(
    cv: _Canvas, rng: np.random.Generator, cam: _Cam, x: float, z0: float, z1: float, light: float
) -> None:
    height = float(rng.uniform(0.7, 3.0))
    res = cv.side_plane(cam, x, z0, z1, 0.0, height)
    if res is None:
        return
    i0, j0, m, zc, y = res
    sl = (slice(i0, i0 + m.shape[0]), slice(j0, j0 + m.shape[1]))
    base = _pick(rng, _WALL_COLS, 14) * light
    col = base * (1 + rng.uniform(0.03, 0.1) * cv.grain[sl] + 0.06 * cv.low[sl])[..., None]
    fpy = zc / cam.f * np.ones_like(y)
    fpz = zc**2 / (cam.f * abs(x))
    if rng.random() < 0.4:  # block courses
        course = float(rng.uniform(0.2, 0.6))
        lines = 1 - (1 - _stripe(y, course, 0.12, fpy)) * (1 - _stripe(zc - z0, course * 2, 0.06, fpz))
        col = col * (1 - 0.2 * lines[..., None])
    coping = _band(y, height - 0.12, height, fpy)[..., None]
    col = col * (1 - coping) + (base * 1.15) * coping
    cv.paint(i0, j0, m, WALL, np.clip(col, 0, 255))


def _facade_fence(
    cv: _Canvas, rng: np.random.Generator, cam: _Cam, x: float, z0: float, z1: float, light: float
) -> None:
    height = float(rng.uniform(0.9, 2.2))
    res = cv.side_plane(cam, x, z0, z1, 0.0, height)
    if res is None:
        return
    i0, j0, m, zc, y = res
    sl = (slice(i0, i0 + m.shape[0]), slice(j0, j0 + m.shape[1]))
    fcol = _pick(rng, _FENCE_COLS, 12) * light
    fpy = zc / cam.f * np.ones_like(y)
    fpz = zc**2 / (cam.f * abs(x))
    zr = zc - z0
    style = rng.integers(4)
    post_sp = float(rng.uniform(1.8, 3.0))
    posts = _stripe(zr, post_sp, 0.08 / post_sp, fpz) * np.ones_like(y)
    rails = _band(y, height - 0.08, height, fpy) + _band(y, 0.1, 0.18, fpy)
    if style == 0:  # mesh
        fill = np.full_like(y, rng.uniform(0.25, 0.5))
    elif style == 1:  # slats / bars
        sp = float(rng.uniform(0.1, 0.3))
        fill = _stripe(zr, sp, rng.uniform(0.3, 0.8), fpz) * np.ones_like(y)
    elif style == 2:  # solid panels
        fill = np.full_like(y, 0.95)
    else:  # rails only
        fill = _band(y, height * 0.5 - 0.05, height * 0.5 + 0.05, fpy)
    alpha = np.clip(np.maximum(np.maximum(posts, rails), fill), 0, 1)[..., None]
    fence = fcol * (1 + 0.08 * cv.grain[sl])[..., None]
    col = cv.img[sl] * (1 - alpha) + fence * alpha
    cv.paint(i0, j0, m, FENCE, col)


def _facade_hedge(
    cv: _Canvas, rng: np.random.Generator, cam: _Cam, x: float, z0: float, z1: float, veg: np.ndarray
) -> None:
    height = float(rng.uniform(0.8, 2.2))
    res = cv.side_plane(cam, x, z0, z1, 0.0, height + 0.4)
    if res is None:
        return
    i0, j0, m, zc, y = res
    sl = (slice(i0, i0 + m.shape[0]), slice(j0, j0 + m.shape[1]))
    m = m & (y < height + 0.3 * cv.low[sl])
    col = _foliage(cv, sl, veg * rng.uniform(0.8, 1.1))
    cv.paint(i0, j0, m, VEGETATION, col)


def _foliage(cv: _Canvas, sl: tuple[slice, slice], veg: np.ndarray) -> np.ndarray:
    g = cv.grain[sl]
    speck = 0.62 + 0.32 * g + 0.12 * cv.low[sl] - 0.3 * (g > 1.1)
    return veg * np.clip(speck, 0.25, 1.6)[..., None]


def _side_planes(
    cv: _Canvas,
    rng: np.random.Generator,
    cam: _Cam,
    s: _Side,
    z_end: float,
    veg: np.ndarray,
    light: float,
    back: bool,
) -> None:
    """The facade line of one side (``back``: a second row of buildings further out)."""
    x = s.facade + s.sign * (rng.uniform(6, 22) if back else 0.0)
    z = 0.3
    while z < z_end:
        if back:
            kind = "building" if rng.random() < 0.85 else "gap"
        elif s.kind == "buildings":
            kind = str(rng.choice(["building", "wall", "fence", "hedge", "gap"], p=[0.64, 0.12, 0.12, 0.06, 0.06]))
        else:
            kind = str(rng.choice(["wall", "fence", "hedge", "gap"], p=[0.15, 0.35, 0.3, 0.2]))
        length = float(rng.uniform(6, 28) if kind == "building" else rng.uniform(4, 20))
        z1 = min(z + length, z_end)
        if kind == "building":
            _facade_building(cv, rng, cam, x, z, z1, float(rng.uniform(6, 26)), light)
        elif kind == "wall":
            _facade_wall(cv, rng, cam, x, z, z1, light)
        elif kind == "fence":
            _facade_fence(cv, rng, cam, x, z, z1, light)
        elif kind == "hedge":
            _facade_hedge(cv, rng, cam, x, z, z1, veg)
        z = z1


def _backdrop(cv: _Canvas, rng: np.random.Generator, cam: _Cam, z_end: float, veg: np.ndarray) -> None:
    """Buildings and tree rows across the far end of the street."""
    x = -z_end * 2.5
    while x < z_end * 2.5:
        wdt = float(rng.uniform(6, 30))
        r = rng.random()
        if r < 0.7:
            hgt = float(rng.uniform(5, 35))
            pts = cam.front(z_end, [(x, 0), (x + wdt, 0), (x + wdt, hgt), (x, hgt)])
            col = cv.hazed(_pick(rng, _BUILDING_COLS, 14), z_end)
            cv.polys([pts], BUILDING, col, tex=0.1)
        elif r < 0.92:
            blobs = [
                cam.front(z_end - 1, _circle(x + wdt * t, rng.uniform(3, 9), rng.uniform(2.5, 5)))
                for t in np.linspace(0, 1, 4)
            ]
            blobs.append(cam.front(z_end - 1, [(x, 0), (x + wdt, 0), (x + wdt, 4), (x, 4)]))
            cv.polys(blobs, VEGETATION, cv.hazed(veg, z_end), tex=0.3)
        x += wdt


# ---------------------------------------------------------------------------------------------- objects
def _tree(cv: _Canvas, rng: np.random.Generator, cam: _Cam, x: float, z: float, veg: np.ndarray) -> None:
    trunk_h = float(rng.uniform(1.8, 3.8))
    r = float(rng.uniform(1.2, 3.2))
    tw = float(rng.uniform(0.15, 0.35))
    trunk = cam.front(z, [(x - tw / 2, 0), (x + tw / 2, 0), (x + tw / 3, trunk_h + r), (x - tw / 3, trunk_h + r)])
    cv.polys([trunk], VEGETATION, cv.hazed(_jitter(rng, (85, 70, 55), 15), z), tex=0.15)
    yc = trunk_h + r * 0.85
    blobs = [
        cam.front(z, _circle(x + r * 0.55 * rng.normal(), yc + r * 0.4 * rng.normal(), r * rng.uniform(0.45, 0.8)))
        for _ in range(int(rng.integers(4, 9)))
    ]
    allp = np.concatenate(blobs)
    x0, y0 = max(int(allp[:, 0].min()), 0), max(int(allp[:, 1].min()), 0)
    x1, y1 = min(int(allp[:, 0].max()) + 2, cv.w), min(int(allp[:, 1].max()) + 2, cv.h)
    if x0 < x1 and y0 < y1:
        col = _foliage(cv, (slice(y0, y1), slice(x0, x1)), cv.hazed(veg * rng.uniform(0.8, 1.15), z))
        mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
        for b in blobs:
            cv2.fillPoly(mask, [np.round((b - (x0, y0)) * 16).astype(np.int32)], 1, cv2.LINE_8, 4)
        cv.paint(y0, x0, mask.astype(bool), VEGETATION, col)


def _pole(cv: _Canvas, cam: _Cam, x: float, z: float, top: float, width: float, col: np.ndarray) -> None:
    pts = cam.front(z, [(x - width / 2, 0), (x + width / 2, 0), (x + width / 2, top), (x - width / 2, top)])
    cv.polys([pts], POLE, col, tex=0.05)


def _lamp_post(
    cv: _Canvas, rng: np.random.Generator, cam: _Cam, x: float, z: float, toward: float, col: np.ndarray
) -> None:
    top = float(rng.uniform(5.5, 9))
    _pole(cv, cam, x, z, top, float(rng.uniform(0.12, 0.22)), col)
    arm = float(rng.uniform(0.8, 2.2)) * toward
    bar = cam.front(z, [(x, top - 0.12), (x + arm, top - 0.12), (x + arm, top), (x, top)])
    head = cam.front(
        z,
        [
            (x + arm - 0.35, top - 0.25),
            (x + arm + 0.35, top - 0.25),
            (x + arm + 0.25, top + 0.05),
            (x + arm - 0.25, top + 0.05),
        ],
    )
    cv.polys([bar, head], POLE, col, tex=0.05)


def _sign(cv: _Canvas, rng: np.random.Generator, cam: _Cam, x: float, z: float, y: float) -> None:
    size = float(rng.uniform(0.45, 0.9))
    shape = rng.integers(4)
    if shape == 0:
        pts = _circle(x, y, size / 2, n=16)
    elif shape == 1:
        pts = np.array([(x - size / 2, y + size * 0.4), (x + size / 2, y + size * 0.4), (x, y - size * 0.45)])
    elif shape == 2:
        pts = np.array([(x, y - size / 2), (x + size / 2, y), (x, y + size / 2), (x - size / 2, y)])
    else:
        wd = size * rng.uniform(0.8, 1.8)
        pts = np.array(
            [
                (x - wd / 2, y - size / 3),
                (x + wd / 2, y - size / 3),
                (x + wd / 2, y + size / 3),
                (x - wd / 2, y + size / 3),
            ]
        )
    scheme = rng.integers(5)
    rim, face = [
        ((200, 30, 30), (235, 235, 230)),
        ((30, 60, 160), (30, 60, 160)),
        ((230, 190, 30), (230, 190, 30)),
        ((235, 235, 230), (40, 110, 60)),
        ((150, 150, 150), (150, 150, 150)),
    ][scheme]  # last: back of a sign
    outer = cam.front(z - 0.02, pts)
    cv.polys([outer], SIGN, cv.hazed(_jitter(rng, rim, 12), z), tex=0.05)
    inner = cam.front(z - 0.03, (pts - pts.mean(0)) * 0.7 + pts.mean(0))
    cv.polys([inner], SIGN, cv.hazed(_jitter(rng, face, 12), z), tex=0.05)


def _sign_post(cv: _Canvas, rng: np.random.Generator, cam: _Cam, x: float, z: float, col: np.ndarray) -> None:
    top = float(rng.uniform(2.3, 3.6))
    _pole(cv, cam, x, z, top, float(rng.uniform(0.06, 0.12)), col)
    _sign(cv, rng, cam, x, z, top - 0.3)
    if rng.random() < 0.35:
        _sign(cv, rng, cam, x, z, top - 1.0)


def _light_box(cv: _Canvas, rng: np.random.Generator, cam: _Cam, x: float, z: float, y: float, front: bool) -> None:
    bw, bh = float(rng.uniform(0.28, 0.4)), float(rng.uniform(0.8, 1.05))
    box = cam.front(z - 0.05, [(x - bw / 2, y), (x + bw / 2, y), (x + bw / 2, y + bh), (x - bw / 2, y + bh)])
    housing = _jitter(rng, (40, 42, 40) if rng.random() < 0.75 else (170, 150, 60), 10)
    cv.polys([box], LIGHT, cv.hazed(housing, z), tex=0.05)
    if front:
        lit = int(rng.integers(3))
        for k, on in enumerate(((230, 40, 30), (240, 180, 30), (60, 220, 90))):
            c = np.array(on, np.float32) if k == lit else np.array(on, np.float32) * 0.25 + 20
            lamp = cam.front(z - 0.06, _circle(x, y + bh * (0.8 - 0.3 * k), bw * 0.3, n=10))
            cv.polys([lamp], LIGHT, cv.hazed(c, z), tex=0.02)


def _light_post(
    cv: _Canvas, rng: np.random.Generator, cam: _Cam, x: float, z: float, toward: float, col: np.ndarray
) -> None:
    front = rng.random() < 0.8
    if rng.random() < 0.4:  # mast arm over the road with hanging lights
        top = float(rng.uniform(5, 6.5))
        _pole(cv, cam, x, z, top, 0.2, col)
        arm = float(rng.uniform(3, 7)) * toward
        bar = cam.front(z, [(x, top - 0.15), (x + arm, top - 0.1), (x + arm, top), (x, top)])
        cv.polys([bar], POLE, col, tex=0.05)
        for t in (0.6, 0.95) if rng.random() < 0.6 else (0.9,):
            _light_box(cv, rng, cam, x + arm * t, z, top - 1.1, front)
        if rng.random() < 0.5:
            _sign(cv, rng, cam, x + arm * 0.3, z, top - 0.5)
    else:
        top = float(rng.uniform(2.6, 4.0))
        _pole(cv, cam, x, z, top, float(rng.uniform(0.1, 0.18)), col)
        _light_box(cv, rng, cam, x, z, top - 0.2, front)
        if rng.random() < 0.3:
            _sign(cv, rng, cam, x, z, top - 1.3)


def _person(cv: _Canvas, rng: np.random.Generator, cam: _Cam, x: float, z: float) -> None:
    obj = cv.instance(PERSON)
    h = float(rng.uniform(1.55, 1.95) if rng.random() < 0.88 else rng.uniform(1.0, 1.45))
    k = h / 1.75
    side = rng.random() < 0.5
    stride = float(rng.uniform(0.0, 0.35)) * k if side else 0.0
    hip, sh = 0.52 * h, 0.81 * h
    bw = float(rng.uniform(0.85, 1.2)) * (0.6 if side else 1.0)
    hr = 0.07 * h
    top = _pick(rng, _CLOTH_COLS, 15)
    bottom = top if rng.random() < 0.15 else _pick(rng, _CLOTH_COLS, 15)
    skin = _pick(rng, _SKIN_COLS, 8)
    hair = _jitter(rng, (35, 28, 22), 10) if rng.random() < 0.8 else _jitter(rng, (150, 120, 70), 10)
    legs = (
        [
            cam.front(
                z,
                [
                    (x - 0.05 * k, hip),
                    (x + 0.05 * k, hip),
                    (x + stride / 2 + 0.06 * k, 0),
                    (x + stride / 2 - 0.06 * k, 0),
                ],
            ),
            cam.front(
                z,
                [
                    (x - 0.05 * k, hip),
                    (x + 0.05 * k, hip),
                    (x - stride / 2 + 0.06 * k, 0),
                    (x - stride / 2 - 0.06 * k, 0),
                ],
            ),
        ]
        if side
        else [
            cam.front(z, [(x - 0.16 * k * bw, hip), (x - 0.01, hip), (x - 0.04 * k, 0), (x - 0.15 * k * bw, 0)]),
            cam.front(z, [(x + 0.01, hip), (x + 0.16 * k * bw, hip), (x + 0.15 * k * bw, 0), (x + 0.04 * k, 0)]),
        ]
    )
    cv.polys(legs, PERSON, cv.hazed(bottom, z), obj)
    coat = hip - (rng.uniform(0.0, 0.3) * h if rng.random() < 0.3 else 0.0)
    torso = cam.front(
        z,
        [
            (x - 0.2 * k * bw, sh),
            (x + 0.2 * k * bw, sh),
            (x + 0.17 * k * bw, coat),
            (x - 0.17 * k * bw, coat),
        ],
    )
    sw = float(rng.uniform(-0.12, 0.12)) * k if side else 0.0
    arms = [
        cam.front(
            z,
            [
                (x + sgn * 0.2 * k * bw, sh),
                (x + sgn * 0.13 * k * bw, sh),
                (x + sgn * 0.16 * k * bw + sw * sgn, 0.45 * h),
                (x + sgn * 0.23 * k * bw + sw * sgn, 0.45 * h),
            ],
        )
        for sgn in (-1, 1)
    ]
    cv.polys([torso] + arms, PERSON, cv.hazed(top, z), obj)
    neck = cam.front(
        z,
        [
            (x - 0.05 * k, sh - 0.02),
            (x + 0.05 * k, sh - 0.02),
            (x + 0.05 * k, h - 1.6 * hr),
            (x - 0.05 * k, h - 1.6 * hr),
        ],
    )
    cv.polys([neck, cam.front(z, _circle(x, h - hr, hr * 0.85, hr, n=12))], PERSON, cv.hazed(skin, z), obj)
    cv.polys([cam.front(z, _circle(x, h - hr * 0.7, hr * 0.9, hr * 0.6, n=10))], PERSON, cv.hazed(hair, z), obj)
    if rng.random() < 0.2:  # bag
        bx = x + (0.25 if rng.random() < 0.5 else -0.25) * k
        bag = cam.front(z, [(bx - 0.12, 0.4 * h), (bx + 0.12, 0.4 * h), (bx + 0.12, 0.58 * h), (bx - 0.12, 0.58 * h)])
        cv.polys([bag], PERSON, cv.hazed(_pick(rng, _CLOTH_COLS, 15), z), obj)


def _vehicle_side(cam: _Cam, xs: float, z: float, length: float, profile: Sequence[tuple[float, float]]) -> _Pts:
    return cam.side(xs, [(z + length * t, y) for t, y in profile])


def _car(cv: _Canvas, rng: np.random.Generator, cam: _Cam, x: float, z: float, toward: bool) -> None:
    obj = cv.instance(CAR)
    w, length, h = float(rng.uniform(1.6, 1.95)), float(rng.uniform(3.8, 4.9)), float(rng.uniform(1.35, 1.7))
    body = cv.hazed(_pick(rng, _CAR_COLS, 12), z)
    side_col = body * rng.uniform(0.7, 0.88)
    glass = cv.hazed(_jitter(rng, (40, 45, 55), 10) if rng.random() < 0.7 else _jitter(rng, (110, 125, 140), 12), z)
    dark = cv.hazed(_jitter(rng, (25, 25, 27), 5), z)
    belt = 0.95
    hw = w / 2
    xs = x - hw if x - hw > 0.05 else (x + hw if x + hw < -0.05 else None)
    if cam.f * w / z < 6.0:  # distant: silhouette only
        if xs is not None:
            sides = [
                _vehicle_side(cam, xs, z, length, [(0, 0.0), (0, belt), (1, belt), (1, 0.0)]),
                _vehicle_side(cam, xs, z, length, [(0.22, belt), (0.34, h), (0.78, h), (0.9, belt)]),
            ]
            cv.polys(sides, CAR, side_col, obj)
        near = cam.front(
            z,
            [
                (x - hw, 0),
                (x + hw, 0),
                (x + hw, belt),
                (x + hw - 0.08, belt),
                (x + hw - 0.22, h),
                (x - hw + 0.22, h),
                (x - hw + 0.08, belt),
                (x - hw, belt),
            ],
        )
        cv.polys([near], CAR, body, obj)
        pane = cam.front(
            z,
            [
                (x - hw + 0.14, belt + 0.1),
                (x + hw - 0.14, belt + 0.1),
                (x + hw - 0.26, h - 0.07),
                (x - hw + 0.26, h - 0.07),
            ],
        )
        cv.polys([pane], CAR, glass, obj, tex=0.03)
        return
    if xs is not None:
        cabin = (
            [(0.22, belt), (0.34, h), (0.78, h), (0.9, belt)]
            if not toward
            else [(0.1, belt), (0.22, h), (0.66, h), (0.78, belt)]
        )
        cv.polys(
            [_vehicle_side(cam, xs, z, length, [(0, 0.22), (0, belt), (1, belt), (1, 0.22)])],
            CAR,
            side_col,
            obj,
        )
        cv.polys([_vehicle_side(cam, xs, z, length, cabin)], CAR, side_col * 1.05, obj)
        (t0, _), (t1, _), (t2, _), (t3, _) = cabin
        win = [
            (t0 + 0.03, belt + 0.05),
            (t1 + 0.02, h - 0.06),
            (t2 - 0.02, h - 0.06),
            (t3 - 0.03, belt + 0.05),
        ]
        cv.polys([_vehicle_side(cam, xs, z, length, win)], CAR, glass, obj, tex=0.03)
        wheels = [cam.side(xs, _circle(z + length * t, 0.31, 0.31, n=12)) for t in (0.18, 0.8)]
        cv.polys(wheels, CAR, dark, obj, tex=0.03)
    # near face (rear, or front for oncoming cars)
    lower = cam.front(z, [(x - hw, 0.22), (x + hw, 0.22), (x + hw, belt), (x - hw, belt)])
    cab = cam.front(z, [(x - hw + 0.08, belt), (x + hw - 0.08, belt), (x + hw - 0.22, h), (x - hw + 0.22, h)])
    tyres = [
        cam.front(
            z,
            [
                (x + sg * (hw - 0.08), 0),
                (x + sg * (hw - 0.3), 0),
                (x + sg * (hw - 0.3), 0.3),
                (x + sg * (hw - 0.08), 0.3),
            ],
        )
        for sg in (-1, 1)
    ]
    cv.polys(tyres, CAR, dark, obj, tex=0.03)
    cv.polys([lower, cab], CAR, body, obj)
    glass_top = h - 0.07
    glass_bot = belt + (0.05 if toward else 0.12)
    pane = cam.front(
        z,
        [
            (x - hw + 0.14, glass_bot),
            (x + hw - 0.14, glass_bot),
            (x + hw - 0.26, glass_top),
            (x - hw + 0.26, glass_top),
        ],
    )
    cv.polys([pane], CAR, glass, obj, tex=0.03)
    lamp = cv.hazed(_jitter(rng, (215, 215, 200), 10) if toward else _jitter(rng, (180, 30, 30), 15), z)
    lamps = [
        cam.front(
            z,
            [
                (x + sg * (hw - 0.04), 0.66),
                (x + sg * (hw - 0.3), 0.66),
                (x + sg * (hw - 0.3), 0.8),
                (x + sg * (hw - 0.04), 0.8),
            ],
        )
        for sg in (-1, 1)
    ]
    cv.polys(lamps, CAR, lamp, obj, tex=0.03)
    bumper = cam.front(z, [(x - hw, 0.22), (x + hw, 0.22), (x + hw, 0.34), (x - hw, 0.34)])
    plate = cam.front(z, [(x - 0.26, 0.4), (x + 0.26, 0.4), (x + 0.26, 0.52), (x - 0.26, 0.52)])
    cv.polys([bumper], CAR, dark * 1.4, obj, tex=0.03)
    cv.polys([plate], CAR, cv.hazed(_jitter(rng, (220, 220, 215), 10), z), obj, tex=0.02)


def _box(
    cv: _Canvas,
    cam: _Cam,
    label: int,
    obj: int,
    x: float,
    z: float,
    w: float,
    length: float,
    y0: float,
    y1: float,
    col: np.ndarray,
    side_col: np.ndarray,
) -> float | None:
    """A box's visible side face then its near face; returns the side plane's X (None if unseen)."""
    xs = x - w / 2 if x - w / 2 > 0.05 else (x + w / 2 if x + w / 2 < -0.05 else None)
    if xs is not None:
        cv.polys([cam.side(xs, [(z, y0), (z, y1), (z + length, y1), (z + length, y0)])], label, side_col, obj)
    cv.polys([cam.front(z, [(x - w / 2, y0), (x + w / 2, y0), (x + w / 2, y1), (x - w / 2, y1)])], label, col, obj)
    return xs


def _wheels(
    cv: _Canvas,
    cam: _Cam,
    label: int,
    obj: int,
    xs: float | None,
    x: float,
    w: float,
    z: float,
    ts: Sequence[float],
    dark: np.ndarray,
) -> None:
    if xs is not None:
        cv.polys([cam.side(xs, _circle(z0, 0.48, 0.48, n=12)) for z0 in ts], label, dark, obj, tex=0.03)
    tyres = [
        cam.front(
            z,
            [
                (x + sg * (w / 2 - 0.05), 0),
                (x + sg * (w / 2 - 0.4), 0),
                (x + sg * (w / 2 - 0.4), 0.5),
                (x + sg * (w / 2 - 0.05), 0.5),
            ],
        )
        for sg in (-1, 1)
    ]
    cv.polys(tyres, label, dark, obj, tex=0.03)


def _truck(cv: _Canvas, rng: np.random.Generator, cam: _Cam, x: float, z: float, toward: bool) -> None:
    obj = cv.instance(TRUCK)
    cab_col = cv.hazed(_pick(rng, _CAR_COLS, 15), z)
    box_col = cv.hazed(_pick(rng, ((220, 220, 215), (170, 170, 170), (60, 90, 140), (150, 40, 35)), 10), z)
    glass = cv.hazed(_jitter(rng, (40, 45, 55), 10), z)
    dark = cv.hazed(_jitter(rng, (25, 25, 27), 5), z)
    w, lc, lb = 2.45, float(rng.uniform(2.0, 2.5)), float(rng.uniform(4.5, 8.0))
    hc, hb = float(rng.uniform(2.7, 3.1)), float(rng.uniform(3.2, 3.9))
    if toward:  # cab first in view
        xs = _box(cv, cam, TRUCK, obj, x, z + lc + 0.3, w, lb, 0.9, hb, box_col, box_col * 0.8)
        _wheels(cv, cam, TRUCK, obj, xs, x, w, z + lc + 0.3, [z + lc + lb - 1.0], dark)
        xs = _box(cv, cam, TRUCK, obj, x, z, w - 0.1, lc, 0.45, hc, cab_col, cab_col * 0.8)
        _wheels(cv, cam, TRUCK, obj, xs, x, w, z, [z + 1.1], dark)
        pane = cam.front(z, [(x - 1.05, 1.7), (x + 1.05, 1.7), (x + 1.0, hc - 0.2), (x - 1.0, hc - 0.2)])
        cv.polys([pane], TRUCK, glass, obj, tex=0.03)
        grille = cam.front(z, [(x - 0.8, 0.6), (x + 0.8, 0.6), (x + 0.8, 1.3), (x - 0.8, 1.3)])
        cv.polys([grille], TRUCK, dark * 1.6, obj)
    else:
        xs = _box(cv, cam, TRUCK, obj, x, z + lb, w - 0.1, lc, 0.45, hc, cab_col, cab_col * 0.8)
        xs = _box(cv, cam, TRUCK, obj, x, z, w, lb, 0.9, hb, box_col, box_col * 0.8)
        _wheels(cv, cam, TRUCK, obj, xs, x, w, z, [z + 1.0, z + lb + 1.2], dark)
        door = cam.front(z, [(x - 0.03, 1.0), (x + 0.03, 1.0), (x + 0.03, hb - 0.1), (x - 0.03, hb - 0.1)])
        cv.polys([door], TRUCK, box_col * 0.6, obj)
        lamps = [
            cam.front(z, [(x + sg * 1.15, 0.95), (x + sg * 0.9, 0.95), (x + sg * 0.9, 1.1), (x + sg * 1.15, 1.1)])
            for sg in (-1, 1)
        ]
        cv.polys(lamps, TRUCK, cv.hazed(_jitter(rng, (180, 30, 30), 15), z), obj)


def _bus(cv: _Canvas, rng: np.random.Generator, cam: _Cam, x: float, z: float, toward: bool) -> None:
    obj = cv.instance(BUS)
    col = cv.hazed(_pick(rng, ((215, 210, 60), (200, 40, 40), (230, 230, 225), (40, 90, 160), (60, 140, 80)), 12), z)
    glass = cv.hazed(_jitter(rng, (35, 40, 50), 8), z)
    dark = cv.hazed(_jitter(rng, (25, 25, 27), 5), z)
    w, length, h = 2.55, float(rng.uniform(10, 12.5)), float(rng.uniform(3.0, 3.4))
    xs = _box(cv, cam, BUS, obj, x, z, w, length, 0.3, h, col, col * 0.82)
    if xs is not None:
        n = int(length / 1.5)
        panes = [
            cam.side(
                xs,
                [
                    (z + 0.9 + i * 1.45, 1.2),
                    (z + 0.9 + i * 1.45, 2.7),
                    (z + 2.15 + i * 1.45, 2.7),
                    (z + 2.15 + i * 1.45, 1.2),
                ],
            )
            for i in range(n - 1)
        ]
        cv.polys(panes, BUS, glass, obj, tex=0.03)
    _wheels(cv, cam, BUS, obj, xs, x, w, z, [z + 2.3, z + length - 2.6], dark)
    lo, hi = (0.95, h - 0.35) if toward else (1.7, h - 0.3)
    pane = cam.front(z, [(x - 1.15, lo), (x + 1.15, lo), (x + 1.15, hi), (x - 1.15, hi)])
    cv.polys([pane], BUS, glass, obj, tex=0.03)
    display = cam.front(z, [(x - 0.9, h - 0.3), (x + 0.9, h - 0.3), (x + 0.9, h - 0.08), (x - 0.9, h - 0.08)])
    cv.polys([display], BUS, cv.hazed(_jitter(rng, (230, 150, 40), 10), z), obj, tex=0.02)


def _static(cv: _Canvas, rng: np.random.Generator, cam: _Cam, x: float, z: float) -> None:
    if rng.random() < 0.5:  # bin
        w, h = float(rng.uniform(0.5, 0.8)), float(rng.uniform(0.8, 1.2))
    else:  # bollard / box
        w, h = float(rng.uniform(0.12, 0.5)), float(rng.uniform(0.6, 1.2))
    pts = cam.front(z, [(x - w / 2, 0), (x + w / 2, 0), (x + w / 2, h), (x - w / 2, h)])
    cv.polys(
        [pts],
        STATIC,
        cv.hazed(_pick(rng, ((50, 70, 55), (90, 90, 95), (140, 140, 140), (60, 60, 60)), 12), z),
    )


def _ego_hood(cv: _Canvas, rng: np.random.Generator) -> None:
    h, w = cv.h, cv.w
    depth = rng.uniform(0.04, 0.09) * h
    cols = np.arange(w, dtype=np.float32)
    top = h - depth * (1 - 0.5 * ((cols - w / 2) / (w / 2)) ** 2)
    m = np.arange(h, dtype=np.float32)[:, None] >= top[None, :]
    col = _jitter(rng, (40, 40, 45), 15) * (1 + 0.4 * cv.low[..., None])
    cv.paint(0, 0, m, EGO, col)


# ------------------------------------------------------------------------------------------------ scene
def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(max(hi, lo * 1.01)))))


def render_scene(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns image HxWx3 uint8 RGB, labelIds HxW uint8 (Cityscapes ids), instanceIds HxW int32."""
    h, w = int(height), int(width)
    cv = _Canvas(rng, h, w)
    cam = _Cam(
        f=w * rng.uniform(0.5, 0.8),
        hc=rng.uniform(1.3, 1.8),
        yh=h * rng.uniform(0.3, 0.5),
        xv=w * rng.uniform(0.3, 0.7),
    )
    z_min = cam.f * cam.hc / max(h - cam.yh, 1.0) * 0.9  # nearest ground depth in view
    z_end = float(rng.uniform(35, 150))

    # street layout
    n_lanes = int(rng.choice([1, 2, 2, 3, 4]))
    lane_w = float(rng.uniform(2.8, 3.6))
    own = int(rng.integers(n_lanes))
    x_left = -(own + rng.uniform(0.3, 0.7)) * lane_w
    x_right = x_left + n_lanes * lane_w
    lanes = [x_left + k * lane_w for k in range(1, n_lanes)]
    left, right = _Side(rng, -1, x_left), _Side(rng, 1, x_right)
    crosswalk = float(rng.uniform(6, 35)) if rng.random() < 0.3 else None

    road_v = rng.uniform(62, 125)
    road_col = np.clip(road_v + rng.normal(0, 3, 3) + np.array([0, 0, rng.uniform(-2, 6)]), 0, 255).astype(np.float32)
    veg = _pick(rng, _VEG_COLS, 12)
    if rng.random() < 0.25:
        veg = _pick(rng, _GREEN_TERRAIN_COLS, 10) * rng.uniform(0.75, 0.95)  # vegetation as green as grass
    sun = rng.uniform(0.75, 1.15, 2)

    haze = _sky(cv, rng, cam)
    cv.haze_col, cv.haze_dist = haze, float(rng.uniform(120, 500))
    _ground(cv, rng, cam, left, right, lanes, lane_w, crosswalk, road_col)
    _backdrop(cv, rng, cam, z_end, veg)
    for s, light in ((left, sun[0]), (right, sun[1])):
        if s.kind == "buildings" and rng.random() < 0.6:
            _side_planes(cv, rng, cam, s, z_end, veg, light * 0.95, back=True)

    # background: trees in parks beyond the facade line
    for s in (left, right):
        if s.kind == "park":
            for _ in range(int(rng.integers(4, 14))):
                zt = _log_uniform(rng, max(z_min, 3), z_end)
                xt = s.facade + s.sign * rng.uniform(1, 15)
                _tree(cv, rng, cam, xt, zt, veg)
    for s, light in ((left, sun[0]), (right, sun[1])):
        _side_planes(cv, rng, cam, s, z_end, veg, light, back=False)

    # foreground objects, drawn far to near
    objs: list[tuple[float, Callable[[], None]]] = []

    def add(z: float, fn: Callable[..., None], *args: Any) -> None:
        objs.append((z, lambda: fn(cv, rng, cam, *args)))

    pole_col = _pick(rng, ((110, 110, 112), (60, 62, 60), (40, 60, 45), (150, 150, 150)), 10)
    for s in (left, right):
        curb_x = s.e1 + s.sign * 0.45
        if s.sw > 0 and rng.random() < 0.75:
            sp = float(rng.uniform(14, 32))
            zz = float(rng.uniform(z_min, z_min + sp))
            while zz < z_end:
                add(zz, _lamp_post, curb_x, zz, -s.sign, pole_col)
                zz += sp
        if rng.random() < (0.5 if s.kind == "buildings" else 0.35):
            sp = float(rng.uniform(7, 15))
            zz = float(rng.uniform(z_min, z_min + sp))
            xt = s.e1 + s.sign * (s.sw * rng.uniform(0.15, 0.4) if s.sw > 0 else 0.8)
            while zz < z_end:
                add(zz, _tree, xt, zz, veg)
                zz += sp * rng.uniform(0.8, 1.2)
        for _ in range(int(rng.poisson(1.2))):
            zz = _log_uniform(rng, z_min + 1, z_end * 0.7)
            xx = s.e1 + s.sign * (0.3 if rng.random() < 0.7 else max(s.sw - 0.3, 0.3))
            add(zz, _sign_post, xx, zz, pole_col)
        if s.sw > 0 and rng.random() < 0.3:
            for _ in range(int(rng.integers(1, 4))):
                zz = _log_uniform(rng, z_min + 1, z_end * 0.7)
                add(zz, _static, s.e1 + s.sign * rng.uniform(0.3, s.sw), zz)
    if rng.random() < 0.65:
        zl = crosswalk - 0.5 if crosswalk is not None else _log_uniform(rng, z_min + 3, 45)
        for s in (left, right):
            if rng.random() < 0.75:
                add(zl, _light_post, s.e1 + s.sign * 0.4, zl, -s.sign, pole_col)

    # vehicles per lane
    oncoming = n_lanes >= 2 and rng.random() < 0.6
    parking = {k: rng.random() < 0.45 for k in (0, n_lanes - 1) if k != own}
    for k in range(n_lanes):
        centre = x_left + (k + 0.5) * lane_w
        park = parking.get(k, False)
        toward = oncoming and k < n_lanes // 2 and not park
        if park:
            xc = centre + (-0.4 if k == 0 else 0.4) * (lane_w - 2.0)
            zz = float(rng.uniform(z_min * 0.6, z_min + 4))
            while zz < z_end:
                if rng.random() < 0.8:
                    add(zz, _car, xc, zz, False)
                zz += rng.uniform(4.4, 5.5) + rng.exponential(2.0)
            continue
        zz = float(rng.uniform(6, 14) if k == own else rng.uniform(z_min * 0.6, 15))
        while zz < z_end:
            xc = centre + rng.normal(0, 0.15)
            r = rng.random()
            if r < 0.06:
                add(zz, _truck, xc, zz, toward)
                zz += 12
            elif r < 0.11:
                add(zz, _bus, xc, zz, toward)
                zz += 13
            elif r < 0.75:
                add(zz, _car, xc, zz, toward)
                zz += 5
            zz += rng.exponential(8.0) + 1.0

    # people (riders and bicycles are left out: a few pixels at 128 x 256, no model learns them here)
    for _ in range(int(rng.poisson(4.5) + (rng.poisson(5) if rng.random() < 0.3 else 0))):
        sides = [s for s in (left, right) if s.sw > 0]
        zz = _log_uniform(rng, z_min * 0.9, z_end * 0.8)
        if sides and rng.random() < 0.85:
            s = sides[int(rng.integers(len(sides)))]
            xx = s.e1 + s.sign * rng.uniform(0.3, s.sw - 0.2) if s.sw > 0.5 else s.e1 + s.sign * 0.3
        else:
            if crosswalk is not None and rng.random() < 0.7:
                zz = crosswalk + rng.uniform(0.3, 3.2)
            xx = rng.uniform(x_left, x_right)
        add(zz, _person, xx, zz)
        if rng.random() < 0.25:
            add(zz + 0.6, _person, xx + rng.uniform(-0.7, 0.7), zz + rng.uniform(0.2, 1.0))
    objs.sort(key=lambda t: -t[0])
    for _, draw in objs:
        draw()
    if rng.random() < 0.2:
        _ego_hood(cv, rng)

    image = _finish(cv, rng)
    return image, cv.lab.copy(), _instances(cv)


def _finish(cv: _Canvas, rng: np.random.Generator) -> np.ndarray:
    """Global lighting, colour cast, optical blur and sensor noise (image only)."""
    img = cv.img
    mean = float(img.mean())
    img = (img - mean) * rng.uniform(0.75, 1.2) + mean
    img = img * rng.uniform(0.7, 1.2) * rng.uniform(0.93, 1.07, 3).astype(np.float32)
    img = 255.0 * (np.clip(img, 0, 255) / 255.0) ** rng.uniform(0.85, 1.2)
    h, w = cv.h, cv.w
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    vign = 1 - rng.uniform(0, 0.25) * (((xx - w / 2) / w) ** 2 + ((yy - h / 2) / h) ** 2) * 2
    img = img * vign[..., None]
    img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), rng.uniform(0.4, 0.9))
    sigma = rng.uniform(1.0, 3.5)
    img = img + rng.standard_normal((h, w, 3), np.float32) * sigma + rng.standard_normal((h, w, 1), np.float32) * sigma
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _instances(cv: _Canvas) -> np.ndarray:
    """Cityscapes instanceIds: label*1000+k for each visible thing (k per class from 0), else the label."""
    present = np.unique(cv.obj)
    lut = np.zeros(len(cv.obj_label), np.int32)
    counters: dict[int, int] = {}
    for o in present[present > 0]:
        lbl = cv.obj_label[int(o)]
        k = counters.get(lbl, 0)
        counters[lbl] = k + 1
        lut[o] = lbl * 1000 + k
    return np.where(cv.obj > 0, lut[cv.obj], cv.lab.astype(np.int32)).astype(np.int32)


# ------------------------------------------------------------------------------------------------ files
def _scene_rng(seed: int, split_index: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, split_index, index]))


def _write_png(path: Path, array: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", array, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise OSError(f"could not encode {path}")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(buf.tobytes())
    os.replace(tmp, path)


def _scene_names(split: str, n: int) -> list[tuple[str, str]]:
    cities = TRAIN_CITIES if split == "train" else VAL_CITIES
    out = []
    for i in range(n):
        city = cities[i % len(cities)]
        out.append((city, f"{city}_{i // len(cities):06d}_{_FRAME:06d}"))
    return out


_Task = tuple[str, str, int, int, str, str, int, int, int]


def _write_scene(task: _Task) -> None:
    out, split, split_index, index, city, stem, seed, height, width = task
    image, label, inst = render_scene(_scene_rng(seed, split_index, index), height, width)
    root = Path(out)
    _write_png(
        root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png",
        cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
    )
    gt = root / "gtFine" / split / city
    _write_png(gt / f"{stem}_gtFine_labelIds.png", label)
    _write_png(gt / f"{stem}_gtFine_instanceIds.png", inst.astype(np.uint16))


def _init_worker() -> None:
    cv2.setNumThreads(1)


def _pool_context() -> Any:
    """``forkserver`` where available, else ``spawn``. Plain ``fork`` deadlocks when the parent has
    already run threaded OpenCV or torch code (seen in the test suite): the children inherit locks
    held by threads that do not exist in them. The fork server is a fresh process that imports only
    this module (the package imports torch lazily), so workers still start in well under a second."""
    methods = mp.get_all_start_methods()
    return mp.get_context("forkserver" if "forkserver" in methods else "spawn")


def generate_dataset(
    out: str | Path,
    train: int = DEFAULT_TRAIN,
    val: int = DEFAULT_VAL,
    seed: int = 0,
    height: int = DEFAULT_HEIGHT,
    width: int = DEFAULT_WIDTH,
    workers: int = 2,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, int]:
    """Writes <out>/leftImg8bit/{train,val}/<city>/<city>_<seq:06d>_<frame:06d>_leftImg8bit.png and
    <out>/gtFine/{train,val}/<city>/<same stem>_gtFine_labelIds.png and _gtFine_instanceIds.png
    (instanceIds as 16-bit PNG like Cityscapes). Returns {"train": n, "val": n}. progress(done, total) is
    called as scenes finish."""
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    marker = root / "synth.json"
    marker.unlink(missing_ok=True)  # an interrupted run must not look complete
    counts = {"train": int(train), "val": int(val)}
    tasks: list[_Task] = []
    expected: set[Path] = set()
    for split_index, split in enumerate(("train", "val")):
        cities = TRAIN_CITIES if split == "train" else VAL_CITIES
        for city in cities:
            for top in ("leftImg8bit", "gtFine"):
                (root / top / split / city).mkdir(parents=True, exist_ok=True)
        for index, (city, stem) in enumerate(_scene_names(split, counts[split])):
            tasks.append((str(root), split, split_index, index, city, stem, int(seed), int(height), int(width)))
            expected.add(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
            for suffix in ("labelIds", "instanceIds"):
                expected.add(root / "gtFine" / split / city / f"{stem}_gtFine_{suffix}.png")

    total = len(tasks)
    workers = max(1, min(int(workers), total))
    done = 0
    if workers == 1:
        for task in tasks:
            _write_scene(task)
            done += 1
            if progress is not None:
                progress(done, total)
    else:
        chunk = max(1, min(8, total // (workers * 8)))
        with _pool_context().Pool(workers, initializer=_init_worker) as pool:
            for _ in pool.imap_unordered(_write_scene, tasks, chunksize=chunk):
                done += 1
                if progress is not None:
                    progress(done, total)

    # drop scenes left over from an earlier, larger generation into the same folders
    for split in ("train", "val"):
        for city in TRAIN_CITIES if split == "train" else VAL_CITIES:
            for top in ("leftImg8bit", "gtFine"):
                for path in (root / top / split / city).glob("*.png"):
                    if path not in expected:
                        path.unlink()

    meta = {
        "generator": "segdistill.data.synthetic",
        "version": _FORMAT_VERSION,
        "layout": "cityscapes",
        "seed": int(seed),
        "height": int(height),
        "width": int(width),
        "train": counts["train"],
        "val": counts["val"],
        "train_cities": list(TRAIN_CITIES),
        "val_cities": list(VAL_CITIES),
    }
    tmp = marker.with_name(f".{marker.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, marker)
    return counts


def read_params(root: str | Path) -> dict[str, Any]:
    """The generator parameters (the keys of ``DEFAULT_PARAMS``) recorded in ``<root>/synth.json``."""
    from segdistill.errors import UserError

    path = Path(root) / "synth.json"
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read the generator record {path}: {exc}") from None
    return {key: meta.get(key) for key in DEFAULT_PARAMS}
