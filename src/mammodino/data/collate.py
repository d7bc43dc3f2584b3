"""Batching of pretraining samples, crop-major like DINOv2's collate_data_and_cast."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def _crop_major(samples: Sequence[dict[str, Any]], key: str) -> torch.Tensor:
    """[B, n, ...] per-sample stacks -> [n * B, ...]: all first crops, then all second crops, ..."""
    stacked = torch.stack([s[key] for s in samples], dim=1)
    return stacked.reshape(-1, *stacked.shape[2:])


def collate_pretrain(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack samples crop-major; adds the iBOT helpers DINOv2 computes at collate time.

    Beyond docs/ARCHITECTURE.md's keys: `indices` [B] (image index of each sample),
    `mask_indices_list` (flat indices of masked tokens in `masks`), `masks_weight` (1 / masked
    tokens of its crop, per masked token: the iBOT loss averages over each crop's masked tissue
    tokens) and `n_masked_patches` [1].
    """
    if not samples:
        raise ValueError("collate_pretrain needs at least one sample")
    n_global = samples[0]["global_crops"].shape[0]
    n_local = samples[0]["local_crops"].shape[0]
    global_crops = _crop_major(samples, "global_crops")
    local_crops = _crop_major(samples, "local_crops")
    masks = _crop_major(samples, "masks")
    patch_tissue = _crop_major(samples, "global_patch_tissue").flatten(1)
    mask_indices = masks.flatten().nonzero().flatten()
    per_crop = 1.0 / masks.sum(-1).clamp(min=1).to(torch.float32)
    masks_weight = per_crop.unsqueeze(-1).expand_as(masks)[masks]
    return {
        **collate_slice_pairs(samples, global_crops.shape[-1]),
        **collate_partner_crops(samples, global_crops.shape[-1]),
        "global_crops": global_crops,
        "local_crops": local_crops,
        "masks": masks,
        "global_patch_tissue": patch_tissue,
        "n_global": n_global,
        "n_local": n_local,
        "batch_size": len(samples),
        "indices": torch.tensor([int(s["index"]) for s in samples], dtype=torch.long),
        "mask_indices_list": mask_indices,
        "masks_weight": masks_weight,
        "n_masked_patches": torch.tensor([mask_indices.numel()], dtype=torch.long),
    }


def collate_slice_pairs(samples: Sequence[dict[str, Any]], default_size: int) -> dict[str, Any]:
    """The DBT slice pairs of a batch (samples with a `slice_pair`, in batch order).

    `slice_pairs` float32 [2, P, 1, S, S] (all first slices, then all second slices),
    `slice_volume` int64 [P], `slice_offset_mm` and `slice_position_mm` float32 [P],
    `slice_patch_tissue` float32 [P, N] (tissue fraction of each patch of the pair crop). P = 0 in
    an FFDM-only batch (S is then the global crop size, N 0): the slice loss is 0.
    """
    pairs = [s for s in samples if "slice_pair" in s]
    if not pairs:
        return {
            "slice_pairs": torch.zeros(2, 0, 1, default_size, default_size),
            "slice_volume": torch.zeros(0, dtype=torch.long),
            "slice_offset_mm": torch.zeros(0),
            "slice_position_mm": torch.zeros(0),
            "slice_patch_tissue": torch.zeros(0, 0),
        }
    return {
        "slice_pairs": torch.stack([s["slice_pair"] for s in pairs], dim=1),
        "slice_volume": torch.tensor([int(s["slice_volume"]) for s in pairs], dtype=torch.long),
        "slice_offset_mm": torch.tensor([float(s["slice_offset_mm"]) for s in pairs]),
        "slice_position_mm": torch.tensor([float(s["slice_position_mm"]) for s in pairs]),
        "slice_patch_tissue": torch.stack([s["slice_patch_tissue"] for s in pairs]),
    }


def collate_partner_crops(samples: Sequence[dict[str, Any]], default_size: int) -> dict[str, Any]:
    """The patient-pair crops of a batch (data/patient_pairs.py; samples with a `partner_crop`).

    `partner_crops` float32 [P, 1, S, S], `partner_rows` int64 [P] (the batch row of each crop's
    sample) and `partner_groups` int64 [P] (its patient group). P = 0 when no sample has one.
    """
    rows = [i for i, s in enumerate(samples) if "partner_crop" in s]
    if not rows:
        return {
            "partner_crops": torch.zeros(0, 1, default_size, default_size),
            "partner_rows": torch.zeros(0, dtype=torch.long),
            "partner_groups": torch.zeros(0, dtype=torch.long),
        }
    return {
        "partner_crops": torch.stack([samples[i]["partner_crop"] for i in rows]),
        "partner_rows": torch.tensor(rows, dtype=torch.long),
        "partner_groups": torch.tensor(
            [int(samples[i]["partner_group"]) for i in rows], dtype=torch.long
        ),
    }
