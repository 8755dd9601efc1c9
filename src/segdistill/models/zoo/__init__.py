"""Trained teachers from the model zoos: mmsegmentation, the APD release, CIRKD (see :mod:`.convert`)."""

from .convert import (
    ARCH_KEYS,
    ZOO_NAMES,
    ZOOS,
    Converted,
    build_from_section,
    convert_checkpoint,
    converted_section,
    resolved_widths,
    write_converted,
)

__all__ = [
    "ARCH_KEYS",
    "ZOOS",
    "ZOO_NAMES",
    "Converted",
    "build_from_section",
    "convert_checkpoint",
    "converted_section",
    "resolved_widths",
    "write_converted",
]
