"""Old name of eval/backbone.py: kept only while report/ imports it from here; then delete."""

from mammodino.eval.backbone import Backbone, load_backbone, square_canvas

__all__ = ["Backbone", "load_backbone", "square_canvas"]
