"""Optimiser parameter groups: layer-wise lr decay, patch-embed lr multiplier, no decay on
biases/norms/LayerScale/tokens, a separately scheduled (initially frozen) last head layer.

As in DINOv2, every parameter gets an lr multiplier, a weight-decay multiplier and a last-layer
flag; parameters sharing all three are fused into one group, so a single AdamW does layer decay
with a handful of groups. The step loop sets each group's lr and weight decay from the schedules
with `apply_schedules`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from mammodino.settings import OptimSettings

_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")
# Parameters before the first block: they get the deepest decay, like block -1.
_EMBEDDING_NAMES = ("cls_token", "pos_embed", "register_tokens", "mask_token", "patch_embed")


def layer_id(name: str, depth: int) -> int:
    """0 for embeddings, i + 1 for block i, depth + 1 for the final norm (no decay)."""
    match = _BLOCK.search(name)
    if match:
        return int(match.group(1)) + 1
    if any(part in name for part in _EMBEDDING_NAMES):
        return 0
    return depth + 1


def no_weight_decay(name: str, param: nn.Parameter) -> bool:
    """Biases, norm weights, LayerScale gammas and learned tokens are not decayed."""
    return (
        param.ndim <= 1
        or name.endswith(".bias")
        or "norm" in name
        or "gamma" in name
        or any(
            token in name for token in ("cls_token", "pos_embed", "register_tokens", "mask_token")
        )
    )


def param_multipliers(
    module: nn.Module,
    *,
    is_backbone: bool,
    depth: int,
    layerwise_decay: float,
    patch_embed_lr_mult: float,
) -> list[dict[str, Any]]:
    """One record per trainable parameter: name, param, lr_multiplier, wd_multiplier, last layer."""
    records = []
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        lr_mult = 1.0
        if is_backbone:
            lr_mult = layerwise_decay ** (depth + 1 - layer_id(name, depth))
            if "patch_embed" in name:
                lr_mult *= patch_embed_lr_mult
        records.append(
            {
                "name": name,
                "param": param,
                "lr_multiplier": lr_mult,
                "wd_multiplier": 0.0 if no_weight_decay(name, param) else 1.0,
                "is_last_layer": "last_layer" in name,
            }
        )
    return records


def fuse_groups(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Optimiser groups of parameters sharing (lr multiplier, wd multiplier, last-layer flag)."""
    groups: dict[tuple, dict[str, Any]] = {}
    for record in records:
        key = (record["lr_multiplier"], record["wd_multiplier"], record["is_last_layer"])
        group = groups.setdefault(
            key,
            {
                "params": [],
                "names": [],
                "lr_multiplier": key[0],
                "wd_multiplier": key[1],
                "is_last_layer": key[2],
            },
        )
        group["params"].append(record["param"])
        group["names"].append(record["name"])
    return list(groups.values())


def build_param_groups(
    student: nn.ModuleDict, optim: OptimSettings, depth: int
) -> list[dict[str, Any]]:
    """Fused groups of a student {backbone, dino_head[, ibot_head]} with the config's multipliers."""
    records = []
    for part, module in student.items():
        for record in param_multipliers(
            module,
            is_backbone=part == "backbone",
            depth=depth,
            layerwise_decay=optim.layerwise_decay,
            patch_embed_lr_mult=optim.patch_embed_lr_mult,
        ):
            record["name"] = f"{part}.{record['name']}"
            records.append(record)
    return fuse_groups(records)


def build_optimizer(groups: list[dict[str, Any]], betas: tuple[float, float]) -> torch.optim.AdamW:
    """AdamW over the fused groups; the fused kernel where this torch and device provide it."""
    device = groups[0]["params"][0].device
    fused = device.type in ("cuda", "cpu", "mps", "xpu")
    # Group-level lr/weight_decay are placeholders: apply_schedules sets them before every step.
    try:
        return torch.optim.AdamW(groups, lr=0.0, weight_decay=0.0, betas=betas, fused=fused)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=0.0, weight_decay=0.0, betas=betas)


def apply_schedules(optimizer: torch.optim.Optimizer, values: dict[str, float]) -> None:
    """Set every group's lr and weight decay from the step's schedule values."""
    for group in optimizer.param_groups:
        base_lr = values["last_layer_lr"] if group["is_last_layer"] else values["lr"]
        group["lr"] = base_lr * group["lr_multiplier"]
        group["weight_decay"] = values["wd"] * group["wd_multiplier"]
