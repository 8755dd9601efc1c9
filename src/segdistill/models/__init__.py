from .backbones import KNOWN_BACKBONES, TimmBackbone
from .heads import ASPPHead, FCNHead, PSPHead
from .segmentor import Segmentor, build_segmentor, count_parameters

__all__ = [
    "KNOWN_BACKBONES",
    "ASPPHead",
    "FCNHead",
    "PSPHead",
    "Segmentor",
    "TimmBackbone",
    "build_segmentor",
    "count_parameters",
]
