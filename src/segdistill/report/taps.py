"""``segdistill taps``: every module of the teacher and the student with its output shape, the
default taps marked, so a tap can be chosen without reading the model's code."""

from __future__ import annotations

import dataclasses

from rich.console import Console
from rich.table import Table
from torch import nn

from ..config import Config
from ..distill.taps import ModuleShape, module_shapes, split_tap
from ..engine.builders import build_model
from ..errors import UserError
from ..models.sources import default_taps


def _dims(shape: tuple[int, ...] | None) -> str:
    """``C x h x w`` of a probe output (its batch of 1 left out)."""
    if shape is None:
        return "-"
    return "x".join(str(d) for d in (shape[1:] if len(shape) > 1 else shape))


def model_taps(model: nn.Module, num_classes: int, size: tuple[int, int]) -> tuple[list[ModuleShape], dict[str, str]]:
    """``(every module with its shapes, the default taps)`` of ``model`` after one probe forward."""
    rows = module_shapes(model, size)
    try:
        taps = default_taps(model, num_classes)
    except UserError:
        taps = {}
    return rows, taps


def marks(taps: dict[str, str], chosen: dict[str, str]) -> dict[str, list[str]]:
    """``{module name: ["feat (default, input)", ...]}`` for the rows to mark."""
    out: dict[str, list[str]] = {}
    for label, source in (("default", taps), ("config", chosen)):
        for tap, spec in source.items():
            module, reads_input = split_tap(spec)
            out.setdefault(module, []).append(f"{tap} ({label}{', input' if reads_input else ''})")
    return out


def print_taps(
    config: Config, console: Console, size: tuple[int, int] | None = None, tapped_only: bool = False
) -> dict:
    """Print, for the teacher (when the config has one) and the student, every module's name, class,
    input and output shape at ``size`` (default: the crop size), the default taps and those the config
    sets marked. Returns ``{side: {"taps": default taps, "modules": [...]}}``."""
    size = size or tuple(config.data.crop_size)
    sides = [("student", config.model, config.distill.student_taps if config.distill else {})]
    if config.teacher is not None:
        sides.insert(0, ("teacher", config.teacher, config.distill.teacher_taps if config.distill else {}))
    report = {}
    for side, section, chosen in sides:
        # the architecture only: a teacher's trained weights are not needed to list its modules
        model = build_model(dataclasses.replace(section, weights=None), key=side)
        rows, taps = model_taps(model, section.num_classes, size)
        marked = marks(taps, chosen)
        what = section.arch or f"{section.head} / {section.backbone}"
        table = Table(title=f"{side}: {section.source} {what} at 1 x 3 x {size[0]} x {size[1]}")
        table.add_column("module", no_wrap=True)
        table.add_column("class")
        table.add_column("input CxHxW", no_wrap=True)
        table.add_column("output CxHxW", no_wrap=True)
        table.add_column("tap")
        for row in rows:
            if tapped_only and row.name not in marked:
                continue
            tap = ", ".join(marked.get(row.name, []))
            style = "bold" if tap else None
            table.add_row(row.name, row.kind, _dims(row.input), _dims(row.output), tap, style=style)
        console.print(table)
        if taps:
            console.print(f"{side} default taps: " + ", ".join(f"{k}={v}" for k, v in taps.items()))
        else:
            console.print(
                f"{side}: no default taps (no convolution with {section.num_classes} outputs); set distill.{side}_taps"
            )
        report[side] = {
            "taps": taps,
            "modules": [dataclasses.asdict(r) for r in rows],
        }
    return report
