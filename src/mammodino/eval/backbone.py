"""Frozen backbone features: `load_backbone(path)` and `extract_features(images)`.

A backbone comes from a training run (its teacher, as DINOv2 evaluates), a checkpoint file, an
export of ours, a public DINOv2/RAD-DINO file, or `random:ARCH[/PATCH]` (the random-init baseline).
Images are cached mammograms (chest wall left, values in [0, 1]); each is placed at the top-left of
a square canvas, padded with background and resized to `image_size`, so every image gets the same
token grid and the grid maps back to cache pixels by one scale factor.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import cv2
import numpy as np
import torch

from mammodino.errors import CheckpointError
from mammodino.eval.weights_source import check_weights_source
from mammodino.io.weights import EXPORT_MARKER, RUN_MARKER
from mammodino.models.vit import VisionTransformer, build_vit


def square_canvas(image: np.ndarray) -> np.ndarray:
    """The image at the top-left of a zero (background) square canvas of its long side."""
    height, width = image.shape
    side = max(height, width)
    canvas = np.zeros((side, side), dtype=np.float32)
    canvas[:height, :width] = image
    return canvas


@dataclass
class Backbone:
    """A frozen ViT with the preprocessing it expects."""

    model: VisionTransformer
    image_size: int
    source: str

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @cached_property
    def weights_digest(self) -> str:
        """sha256 of the loaded weights (names, dtypes, shapes, values): what the features depend on,
        whatever path or spelling named them."""
        digest = hashlib.sha256()
        for name, tensor in sorted(self.model.state_dict().items()):
            digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
        return digest.hexdigest()

    @property
    def grid_size(self) -> int:
        return self.image_size // self.model.patch_size

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """A 2-D image in [0, 1] -> [1, S, S] float tensor on the model's device."""
        if image.ndim != 2:
            raise ValueError(f"expected a 2-D grayscale image, got shape {image.shape}")
        canvas = square_canvas(image.astype(np.float32, copy=False))
        size = (self.image_size, self.image_size)
        interpolation = cv2.INTER_AREA if canvas.shape[0] > self.image_size else cv2.INTER_LINEAR
        resized = cv2.resize(canvas, size, interpolation=interpolation)
        return torch.from_numpy(resized)[None].to(self.device)

    @torch.inference_mode()
    def extract_features(self, images: Sequence[np.ndarray] | torch.Tensor) -> dict:
        """CLS [B, D], patch tokens [B, h, w, D] and their mean [B, D] (RAD-DINO style)."""
        if isinstance(images, torch.Tensor):
            batch = images.to(self.device, torch.float32)
        else:
            batch = torch.stack([self.preprocess(np.asarray(im)) for im in images])
        out = self.model.forward_features(batch)
        patches = out["x_norm_patchtokens"]
        grid = self.grid_size
        return {
            "cls": out["x_norm_clstoken"],
            "patch_tokens": patches.reshape(len(batch), grid, grid, -1),
            "patch_mean": patches.mean(dim=1),
        }


def _random_backbone(spec: str, image_size: int | None) -> tuple[VisionTransformer, int]:
    arch, _, patch = spec.partition("/")
    size = image_size or 224
    torch.manual_seed(0)  # the random-init baseline is the same network every time
    model = build_vit(arch, img_size=size, patch_size=int(patch or 16), in_chans=1)
    return model, size


def _from_checkpoint(path: Path) -> tuple[VisionTransformer, int]:
    from mammodino.train.checkpoint import load_checkpoint

    payload = load_checkpoint(path)
    arch = dict(payload["arch"])
    model = VisionTransformer(**arch)
    prefix = "backbone."
    state = {k[len(prefix) :]: v for k, v in payload["teacher"].items() if k.startswith(prefix)}
    model.load_state_dict(state)
    return model, int(arch["img_size"])


def _resolve(path: str | Path, image_size: int | None) -> tuple[VisionTransformer, int]:
    spec = str(path)
    if spec.startswith("random:"):
        return _random_backbone(spec[len("random:") :], image_size)
    check_weights_source(spec)  # one line for a missing, empty or foreign file or folder
    path = Path(spec)
    if path.is_dir() and (path / RUN_MARKER).is_dir():
        return _from_checkpoint(path / RUN_MARKER)
    if path.is_dir() and (path / EXPORT_MARKER).is_file():
        from mammodino.models.export import load_exported

        model, _ = load_exported(path)
        return model, int(model.img_size)
    if path.is_file() and path.suffix == ".pt" and path.name.startswith(("step_", "last")):
        return _from_checkpoint(path)
    from mammodino.models.convert import vit_from_weights

    model = vit_from_weights(path)
    return model, int(model.img_size)


def load_backbone(
    path: str | Path, image_size: int | None = None, device: str | torch.device = "cpu"
) -> Backbone:
    """The frozen backbone at `path` (run folder, checkpoint, export, public weights, random:)."""
    model, trained_size = _resolve(path, image_size)
    size = int(image_size or trained_size)
    if size % model.patch_size:
        raise CheckpointError(f"image size {size} is not a multiple of patch {model.patch_size}")
    model.eval().requires_grad_(False).to(device)
    return Backbone(model=model, image_size=size, source=str(path))
