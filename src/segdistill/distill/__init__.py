"""Distillation losses and the Distiller: APD and the baselines it is compared against."""

from .adversarial import AdversarialLoss, Discriminator
from .afdcd import AfDCDLoss
from .apd import APDLoss
from .at import ATLoss
from .base import DistillLoss
from .bpkd import BPKDLoss
from .cirkd import CIRKDMemoryLoss, CIRKDMiniBatchLoss
from .cwd import CWDLoss
from .dist import DISTLoss
from .distiller import Distiller
from .dkd import DKDLoss
from .fitnet import FitNetLoss
from .ifvd import IFVDLoss
from .kd import KDLoss
from .logit_std import standardize
from .maskd import MasKDLoss, ReceptiveTokens
from .maskd_tokens import MaskedTeacher, TokenTask
from .mgd import MGDLoss
from .skd import PairwiseLoss
from .taps import TapRecorder, find_module, probe_channels

__all__ = [
    "APDLoss",
    "AfDCDLoss",
    "ATLoss",
    "AdversarialLoss",
    "BPKDLoss",
    "CIRKDMemoryLoss",
    "CIRKDMiniBatchLoss",
    "CWDLoss",
    "DISTLoss",
    "DKDLoss",
    "Discriminator",
    "DistillLoss",
    "Distiller",
    "FitNetLoss",
    "IFVDLoss",
    "KDLoss",
    "MGDLoss",
    "MasKDLoss",
    "MaskedTeacher",
    "PairwiseLoss",
    "ReceptiveTokens",
    "TapRecorder",
    "TokenTask",
    "find_module",
    "probe_channels",
    "standardize",
]
