"""MammoDINO: self-supervised pretraining of vision transformers for mammography.

`mammodino.load_backbone(path)` gives a frozen backbone whose `extract_features(images)` returns
CLS and patch tokens; it is imported lazily so `import mammodino` stays light.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["load_backbone", "__version__"]


def __getattr__(name: str):
    if name == "load_backbone":
        from mammodino.eval.backbone import load_backbone

        return load_backbone
    raise AttributeError(f"module 'mammodino' has no attribute {name!r}")
