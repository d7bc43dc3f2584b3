"""Vision transformer, DINO/iBOT heads, weight conversion and export."""

from mammodino.models.heads import DINOHead, NormalizedLinear, ProjectionHead
from mammodino.models.vit import ARCHS, VisionTransformer, build_vit, rgb_to_gray_patch_embed

__all__ = [
    "ARCHS",
    "DINOHead",
    "NormalizedLinear",
    "ProjectionHead",
    "VisionTransformer",
    "build_vit",
    "rgb_to_gray_patch_embed",
]
