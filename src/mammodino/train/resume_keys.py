"""What may differ when a run resumes: config keys that stop, log or load but do not change the
trajectory; any other changed key would break the exact continuation."""

from __future__ import annotations

from typing import Any

from mammodino.config import load_config

# Keys that may change when resuming: they stop, log or load, but do not change the trajectory.
RESUMABLE_CHANGES = (
    "optim.max_steps",
    "optim.max_minutes",
    "train.log_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.device",
    "train.malloc_tunables",
    "data.num_workers",
    "data.cache_mb",
    "monitor.",
    "distributed.strategy",  # DDP or FSDP2: same trajectory up to float summation order
    "distributed.activation_checkpointing",
)


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def changed_keys(saved: dict, current: dict) -> list[str]:
    """Config keys whose values differ, except those allowed to change on resume.

    A key the saved config lacks (added to the defaults after the checkpoint was written) counts
    as unchanged while it keeps its default: a new setting's default keeps the old behaviour.
    """
    old = {**_flatten(load_config()), **_flatten(saved)}  # keys it lacks: their defaults
    new = _flatten(current)
    return sorted(
        k
        for k in old.keys() | new.keys()
        if old.get(k) != new.get(k) and not any(k.startswith(p) for p in RESUMABLE_CHANGES)
    )
