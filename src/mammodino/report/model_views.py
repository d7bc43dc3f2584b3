"""What the report shows of a backbone: CLS-to-patch attention of the last block, the PCA of
patch features inside the breast (DINOv2's figure), and sampled training crops with masks."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch

from mammodino.eval.backbone import Backbone, square_canvas
from mammodino.settings import Settings


def _batch(backbone: Backbone, images: Sequence[np.ndarray]) -> torch.Tensor:
    return torch.stack([backbone.preprocess(np.asarray(im, dtype=np.float32)) for im in images])


@torch.inference_mode()
def cls_attention(backbone: Backbone, images: Sequence[np.ndarray]) -> np.ndarray:
    """Attention of the CLS token to every patch in the last block, mean over heads [B, h, w].

    Recomputed from the block's own qkv weights (the model runs fused attention, which never
    materialises the attention matrix); registers are left out, rows renormalised over patches.
    """
    model = backbone.model
    tokens = model.prepare_tokens(_batch(backbone, images))
    for block in model.blocks[:-1]:
        tokens = block(tokens)
    last = model.blocks[-1]
    b, n, d = tokens.shape
    heads = last.attn.num_heads
    qkv = last.attn.qkv(last.norm1(tokens)).reshape(b, n, 3, heads, d // heads)
    q, k, _ = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    attn = torch.softmax(q @ k.transpose(-2, -1) * (d // heads) ** -0.5, dim=-1)
    first_patch = 1 + model.num_register_tokens
    cls_to_patch = attn[:, :, 0, first_patch:].mean(dim=1)
    cls_to_patch = cls_to_patch / cls_to_patch.sum(dim=-1, keepdim=True)
    side = backbone.grid_size
    return cls_to_patch.reshape(b, side, side).float().cpu().numpy()


def canvas_mask(mask: np.ndarray, side: int) -> np.ndarray:
    """A breast mask on the model's square canvas, as the fraction of breast pixels per patch
    of a `side` x `side` grid."""
    canvas = square_canvas((np.asarray(mask) > 0).astype(np.float32))
    return cv2.resize(canvas, (side, side), interpolation=cv2.INTER_AREA)


@torch.inference_mode()
def patch_pca_rgb(
    backbone: Backbone,
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    *,
    threshold: float = 0.5,
) -> np.ndarray:
    """First three principal components of the patch features of all breast patches of all
    images (one shared basis), min-max scaled to RGB; alpha 0 outside the breast [B, h, w, 4]."""
    tokens = backbone.extract_features(list(images))["patch_tokens"].float().cpu().numpy()
    b, h, w, d = tokens.shape
    breast = np.stack([canvas_mask(m, h) >= threshold for m in masks])
    rgba = np.zeros((b, h, w, 4), dtype=np.float32)
    chosen = tokens[breast]
    if len(chosen) < 3:
        return rgba
    centred = chosen - chosen.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    comps = centred @ vt[:3].T
    low, high = np.percentile(comps, 1, axis=0), np.percentile(comps, 99, axis=0)
    rgb = np.clip((comps - low) / np.maximum(high - low, 1e-8), 0, 1)
    rgba[breast, :3] = rgb
    rgba[breast, 3] = 1.0
    return rgba


def canvas_image(image: np.ndarray) -> np.ndarray:
    """The image on the square canvas the model sees (so grids line up with it)."""
    return square_canvas(np.asarray(image, dtype=np.float32))


def sample_crops(settings: Settings, n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """`n` items of the run's own pretraining data set (its crops, tissue grids, iBOT masks)."""
    from mammodino.data.dataset import build_pretrain_dataset

    dataset = build_pretrain_dataset(settings)
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(dataset), size=min(n, len(dataset)), replace=False)
    samples = []
    for i in picks:
        item = dataset[int(i)]
        samples.append(
            {
                k: np.asarray(item[k].numpy() if hasattr(item[k], "numpy") else item[k])
                for k in ("global_crops", "local_crops", "global_patch_tissue", "masks")
            }
        )
    return samples
