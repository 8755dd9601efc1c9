"""segdistill: knowledge distillation for semantic segmentation, with Adaptive Perspective Distillation."""

from .errors import UserError
from .distill import Distiller
from .models import build_segmentor

__version__ = "0.1.0"
__all__ = ["Distiller", "UserError", "build_segmentor", "__version__"]
