"""One street scene: its random layout, painted back to front, then finished (image) and instanced."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import cv2
import numpy as np

from .canvas import Canvas
from .facades import draw_facade_line
from .geometry import Camera
from .palette import GREEN_TERRAIN_COLOURS, POLE_COLOURS, VEGETATION_COLOURS, pick_colour
from .people import draw_person
from .scenery import draw_backdrop, draw_sky, draw_tree
from .street import StreetSide, draw_ground
from .street_objects import draw_lamp_post, draw_sign_post, draw_static_object, draw_traffic_light_post
from .style import DEFAULT, Style
from .vehicles import draw_bus, draw_car, draw_ego_hood, draw_truck


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(max(hi, lo * 1.01)))))


def render_scene(
    rng: np.random.Generator, height: int, width: int, style: Style = DEFAULT
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns image HxWx3 uint8 RGB, labelIds HxW uint8 (Cityscapes ids), instanceIds HxW int32, in ``style``
    (:mod:`.style`; the default is the embedded dataset's)."""
    height, width = int(height), int(width)
    canvas = Canvas(rng, height, width)
    camera = Camera(
        focal=width * rng.uniform(0.5, 0.8),
        height=rng.uniform(1.3, 1.8),
        horizon_y=height * rng.uniform(0.3, 0.5),
        vanishing_x=width * rng.uniform(0.3, 0.7),
    )
    z_min = camera.focal * camera.height / max(height - camera.horizon_y, 1.0) * 0.9  # nearest ground depth in view
    z_end = float(rng.uniform(35, 150))

    # street layout
    n_lanes = int(rng.choice(list(style.lanes)))
    lane_width = float(rng.uniform(2.8, 3.6))
    own_lane = int(rng.integers(n_lanes))
    x_left = -(own_lane + rng.uniform(0.3, 0.7)) * lane_width
    x_right = x_left + n_lanes * lane_width
    lane_lines = [x_left + k * lane_width for k in range(1, n_lanes)]
    left, right = StreetSide(rng, -1, x_left), StreetSide(rng, 1, x_right)
    crosswalk = float(rng.uniform(6, 35)) if rng.random() < 0.3 else None

    road_level = rng.uniform(62, 125)
    road_colour = np.clip(road_level + rng.normal(0, 3, 3) + np.array([0, 0, rng.uniform(-2, 6)]), 0, 255).astype(
        np.float32
    )
    vegetation_colour = pick_colour(rng, VEGETATION_COLOURS, 12)
    if rng.random() < 0.25:  # vegetation as green as grass
        vegetation_colour = pick_colour(rng, GREEN_TERRAIN_COLOURS, 10) * rng.uniform(0.75, 0.95)
    sun = rng.uniform(0.75, 1.15, 2)  # the light on the left and right facades

    haze = draw_sky(canvas, rng, camera)
    canvas.haze_colour, canvas.haze_distance = haze, float(rng.uniform(120, 500))
    draw_ground(canvas, rng, camera, left, right, lane_lines, lane_width, crosswalk, road_colour)
    draw_backdrop(canvas, rng, camera, z_end, vegetation_colour)
    for side, light in ((left, sun[0]), (right, sun[1])):
        if side.kind == "buildings" and rng.random() < 0.6:
            draw_facade_line(canvas, rng, camera, side, z_end, vegetation_colour, light * 0.95, back=True)

    # background: trees in parks beyond the facade line
    for side in (left, right):
        if side.kind == "park":
            for _ in range(int(rng.integers(4, 14))):
                tree_z = _log_uniform(rng, max(z_min, 3), z_end)
                tree_x = side.facade + side.sign * rng.uniform(1, 15)
                draw_tree(canvas, rng, camera, tree_x, tree_z, vegetation_colour)
    for side, light in ((left, sun[0]), (right, sun[1])):
        draw_facade_line(canvas, rng, camera, side, z_end, vegetation_colour, light, back=False)

    # foreground objects, drawn far to near
    objects: list[tuple[float, Callable[[], None]]] = []

    def add(z: float, painter: Callable[..., None], *args: Any) -> None:
        objects.append((z, lambda: painter(canvas, rng, camera, *args)))

    pole_colour = pick_colour(rng, POLE_COLOURS, 10)
    for side in (left, right):
        post_x = side.sidewalk_near + side.sign * 0.45
        if side.sidewalk_width > 0 and rng.random() < 0.75:
            spacing = float(rng.uniform(14, 32))
            z = float(rng.uniform(z_min, z_min + spacing))
            while z < z_end:
                add(z, draw_lamp_post, post_x, z, -side.sign, pole_colour)
                z += spacing
        if rng.random() < (0.5 if side.kind == "buildings" else 0.35):  # a row of street trees
            spacing = float(rng.uniform(7, 15))
            z = float(rng.uniform(z_min, z_min + spacing))
            tree_x = side.sidewalk_near + side.sign * (
                side.sidewalk_width * rng.uniform(0.15, 0.4) if side.sidewalk_width > 0 else 0.8
            )
            while z < z_end:
                add(z, draw_tree, tree_x, z, vegetation_colour)
                z += spacing * rng.uniform(0.8, 1.2)
        for _ in range(int(rng.poisson(1.2))):
            z = _log_uniform(rng, z_min + 1, z_end * 0.7)
            x = side.sidewalk_near + side.sign * (0.3 if rng.random() < 0.7 else max(side.sidewalk_width - 0.3, 0.3))
            add(z, draw_sign_post, x, z, pole_colour)
        if side.sidewalk_width > 0 and rng.random() < 0.3:
            for _ in range(int(rng.integers(1, 4))):
                z = _log_uniform(rng, z_min + 1, z_end * 0.7)
                add(z, draw_static_object, side.sidewalk_near + side.sign * rng.uniform(0.3, side.sidewalk_width), z)
    if rng.random() < 0.65:  # traffic lights at a junction (at the crosswalk if there is one)
        light_z = crosswalk - 0.5 if crosswalk is not None else _log_uniform(rng, z_min + 3, 45)
        for side in (left, right):
            if rng.random() < 0.75:
                add(
                    light_z,
                    draw_traffic_light_post,
                    side.sidewalk_near + side.sign * 0.4,
                    light_z,
                    -side.sign,
                    pole_colour,
                )

    # vehicles per lane
    oncoming = n_lanes >= 2 and rng.random() < 0.6
    parking = {lane: rng.random() < style.parking_chance for lane in (0, n_lanes - 1) if lane != own_lane}
    for lane in range(n_lanes):
        centre = x_left + (lane + 0.5) * lane_width
        parked = parking.get(lane, False)
        toward = oncoming and lane < n_lanes // 2 and not parked
        if parked:
            x = centre + (-0.4 if lane == 0 else 0.4) * (lane_width - 2.0)
            z = float(rng.uniform(z_min * 0.6, z_min + 4))
            while z < z_end:
                if rng.random() < 0.8:
                    add(z, draw_car, x, z, False)
                z += rng.uniform(4.4, 5.5) + rng.exponential(2.0)
            continue
        z = float(rng.uniform(6, 14) if lane == own_lane else rng.uniform(z_min * 0.6, 15))
        while z < z_end:
            x = centre + rng.normal(0, 0.15)
            kind = rng.random()
            truck, bus, car = style.vehicle_thresholds
            if kind < truck:
                add(z, draw_truck, x, z, toward)
                z += 12
            elif kind < bus:
                add(z, draw_bus, x, z, toward)
                z += 13
            elif kind < car:
                add(z, draw_car, x, z, toward)
                z += 5
            z += rng.exponential(8.0) + 1.0

    # people (riders and bicycles are left out: a few pixels at 128 x 256, no model learns them here)
    people = rng.poisson(style.people_rate)  # drawn before the crowd: the default's random stream
    for _ in range(int(people + (rng.poisson(style.crowd_rate) if rng.random() < style.crowd_chance else 0))):
        sides = [side for side in (left, right) if side.sidewalk_width > 0]
        z = _log_uniform(rng, z_min * 0.9, z_end * 0.8)
        if sides and rng.random() < 0.85:  # on a sidewalk
            side = sides[int(rng.integers(len(sides)))]
            x = (
                side.sidewalk_near + side.sign * rng.uniform(0.3, side.sidewalk_width - 0.2)
                if side.sidewalk_width > 0.5
                else side.sidewalk_near + side.sign * 0.3
            )
        else:  # crossing the road
            if crosswalk is not None and rng.random() < 0.7:
                z = crosswalk + rng.uniform(0.3, 3.2)
            x = rng.uniform(x_left, x_right)
        add(z, draw_person, x, z)
        if rng.random() < 0.25:  # a companion
            add(z + 0.6, draw_person, x + rng.uniform(-0.7, 0.7), z + rng.uniform(0.2, 1.0))
    objects.sort(key=lambda item: -item[0])
    for _, draw in objects:
        draw()
    if rng.random() < 0.2:
        draw_ego_hood(canvas, rng)

    canvas.image = style.recolour(canvas.image, canvas.labels)
    image = _finish_image(canvas, rng, style)
    return image, canvas.labels.copy(), _instance_ids(canvas)


def _finish_image(canvas: Canvas, rng: np.random.Generator, style: Style = DEFAULT) -> np.ndarray:
    """Global lighting, colour cast, optical blur and sensor noise (image only), in ``style``'s ranges."""
    image = canvas.image
    mean = float(image.mean())
    image = (image - mean) * rng.uniform(0.75, 1.2) + mean  # contrast
    exposure = rng.uniform(*style.exposure)
    cast = rng.uniform(0.93, 1.07, 3).astype(np.float32)
    if style.cast != DEFAULT.cast:
        cast = cast * np.asarray(style.cast, np.float32)
    image = image * exposure * cast  # exposure, colour cast
    image = 255.0 * (np.clip(image, 0, 255) / 255.0) ** rng.uniform(*style.gamma)  # gamma
    height, width = canvas.height, canvas.width
    rows, columns = np.mgrid[0:height, 0:width].astype(np.float32)
    strength = rng.uniform(0, style.vignette)
    vignette = 1 - strength * (((columns - width / 2) / width) ** 2 + ((rows - height / 2) / height) ** 2) * 2
    image = image * vignette[..., None]
    image = cv2.GaussianBlur(image.astype(np.float32), (0, 0), rng.uniform(0.4, 0.9))
    sigma = rng.uniform(*style.noise)
    image = (
        image
        + rng.standard_normal((height, width, 3), np.float32) * sigma
        + rng.standard_normal((height, width, 1), np.float32) * sigma
    )
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _instance_ids(canvas: Canvas) -> np.ndarray:
    """Cityscapes instanceIds: label*1000+k for each visible thing (k per class from 0), else the label."""
    present = np.unique(canvas.objects)
    lookup = np.zeros(len(canvas.object_labels), np.int32)
    counters: dict[int, int] = {}
    for index in present[present > 0]:
        label = canvas.object_labels[int(index)]
        k = counters.get(label, 0)
        counters[label] = k + 1
        lookup[index] = label * 1000 + k
    return np.where(canvas.objects > 0, lookup[canvas.objects], canvas.labels.astype(np.int32)).astype(np.int32)
