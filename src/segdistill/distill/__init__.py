"""Distillation losses and the Distiller."""

from .apd import APDLoss
from .base import DistillLoss
from .distiller import Distiller
from .kd import KDLoss
from .taps import TapRecorder, find_module, probe_channels

__all__ = ["APDLoss", "DistillLoss", "Distiller", "KDLoss", "TapRecorder", "find_module", "probe_channels"]
