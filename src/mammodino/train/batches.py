"""The loop's data: the data set of `data.source` and endless micro-batches from a data position.

A cache or image folder gives a map-style data set read through a resumable sampler (its position
is a sample count); shards give an endless stream whose position is the `ResumableLoader` state.
Both loaders get their own torch generator: creating them must not draw from the global torch RNG,
or a resumed run would diverge from a straight one.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from mammodino.data.collate import collate_pretrain
from mammodino.data.dataset import build_pretrain_dataset, build_sampler
from mammodino.data.fork_safety import opencv_single_threaded
from mammodino.data.shard_pretrain import build_streaming_pretrain_dataset, is_shard_source
from mammodino.data.shard_stream import ResumableLoader
from mammodino.settings import DataSettings, Settings


def build_dataset(settings: Settings) -> torch.utils.data.Dataset:
    """The cache / image folder data set, or an endless stream when data.source is shards."""
    source = settings.data.source
    if source is not None and is_shard_source(source):
        return build_streaming_pretrain_dataset(settings, source)
    return build_pretrain_dataset(settings)


def sampled_batches(
    dataset: torch.utils.data.Dataset,
    data: DataSettings,
    seed: int,
    position: int,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
) -> Iterator[dict[str, Any]]:
    """Endless micro-batches of a map-style data set from `position` (this rank's share)."""
    # A mixed FFDM + DBT set gets its per-batch DBT quota (MixedSampler), others ResumableSampler.
    sampler = build_sampler(dataset, seed, position, rank, world_size, batch_size=data.batch_size)
    loader = torch.utils.data.DataLoader(
        dataset, sampler=sampler, **_loader_options(data, seed, pin_memory)
    )
    with opencv_single_threaded():  # the (persistent) workers are forked here
        return iter(loader)


def stream_loader(
    dataset: torch.utils.data.IterableDataset,
    data: DataSettings,
    seed: int,
    resume: dict[str, Any] | None = None,
    pin_memory: bool = False,
) -> ResumableLoader:
    """The loader of a shard stream, at the resumed position `resume` (its state) if any."""
    loader = ResumableLoader(dataset, **_loader_options(data, seed, pin_memory))
    if resume is not None:
        loader.load_state_dict(resume)
    return loader


def _loader_options(data: DataSettings, seed: int, pin_memory: bool) -> dict[str, Any]:
    """What both loaders share: whole batches of pretraining samples, seeded workers."""
    return {
        "batch_size": data.batch_size,
        "collate_fn": collate_pretrain,
        "num_workers": data.num_workers,
        "pin_memory": pin_memory,
        "drop_last": True,
        "persistent_workers": data.num_workers > 0,
        "generator": torch.Generator().manual_seed(seed),
    }
