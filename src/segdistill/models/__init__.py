from .backbones import KNOWN_BACKBONES, TimmBackbone
from .heads import ASPPHead, FCNHead, PSPHead
from .measure import count_flops, count_parameters
from .segmentor import Segmentor, build_segmentor

__all__ = [
    "KNOWN_BACKBONES",
    "ASPPHead",
    "FCNHead",
    "PSPHead",
    "Segmentor",
    "TimmBackbone",
    "build_segmentor",
    "count_flops",
    "count_parameters",
]
