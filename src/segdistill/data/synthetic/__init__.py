"""Procedural street scenes written in the Cityscapes layout with Cityscapes label ids.

The project's embedded default dataset: ``generate_dataset`` renders scenes with a pinhole camera over
a flat street (road, sidewalks, facades, walls, fences, vegetation, poles, signs, lights, people and
vehicles) and writes ``leftImg8bit`` / ``gtFine`` files that a Cityscapes loader reads unchanged.

Modules, from the bottom up: ``palette`` (class ids, colours), ``textures`` (noise, stripes, bands),
``geometry`` (camera, outlines), ``canvas`` (the painted image, labels and objects), ``street`` (the
cross-section and the ground), ``scenery`` (sky, backdrop, trees), ``facades``, ``street_objects``,
``people``, ``vehicles``, ``style`` (the cities' look and object mix: ``default``, ``dusk``), ``scene``
(``render_scene``) and ``writer`` (``generate_dataset``, files).
"""

from __future__ import annotations

from .scene import render_scene
from .style import STYLES, Style, get_style
from .writer import (
    DEFAULT_HEIGHT,
    DEFAULT_PARAMS,
    DEFAULT_TRAIN,
    DEFAULT_VAL,
    DEFAULT_WIDTH,
    TRAIN_CITIES,
    VAL_CITIES,
    generate_dataset,
    read_params,
)

__all__ = [
    "DEFAULT_HEIGHT",
    "DEFAULT_PARAMS",
    "DEFAULT_TRAIN",
    "DEFAULT_VAL",
    "DEFAULT_WIDTH",
    "STYLES",
    "Style",
    "TRAIN_CITIES",
    "VAL_CITIES",
    "generate_dataset",
    "get_style",
    "read_params",
    "render_scene",
]
