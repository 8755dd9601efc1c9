"""segdistill: knowledge distillation for semantic segmentation, with Adaptive Perspective Distillation.

The public names are imported lazily, so that light entry points (``segdistill data synth``, the
dataset generator's worker processes) do not pay for importing torch and timm.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import UserError

__version__ = "0.1.0"
__all__ = ["Distiller", "UserError", "build_segmentor", "__version__"]

if TYPE_CHECKING:
    from .distill import Distiller
    from .models import build_segmentor


def __getattr__(name: str) -> Any:
    if name == "Distiller":
        from .distill import Distiller

        return Distiller
    if name == "build_segmentor":
        from .models import build_segmentor

        return build_segmentor
    raise AttributeError(f"module 'segdistill' has no attribute {name!r}")
