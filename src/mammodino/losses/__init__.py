"""DINO, iBOT, KoLeo and cross-slice contrastive losses, and centering strategies."""

from mammodino.losses.centering import EMACentering, SinkhornKnoppCentering, build_centering
from mammodino.losses.dino import DINOLoss
from mammodino.losses.ibot import IBOTPatchLoss
from mammodino.losses.koleo import KoLeoLoss
from mammodino.losses.slice_contrast import SliceContrastLoss, slice_negative_mask

__all__ = [
    "DINOLoss",
    "EMACentering",
    "IBOTPatchLoss",
    "KoLeoLoss",
    "SinkhornKnoppCentering",
    "SliceContrastLoss",
    "build_centering",
    "slice_negative_mask",
]
