"""Trained teachers from the model zoos: mmsegmentation, the APD release, CIRKD (see :mod:`.convert`)."""

from .convert import ARCH_KEYS, ZOOS, Converted, build_from_section, convert_checkpoint, write_converted

__all__ = ["ARCH_KEYS", "ZOOS", "Converted", "build_from_section", "convert_checkpoint", "write_converted"]
