"""Pretraining samples streamed from tar shards (`mammodino prepare --shards`), for data sets
larger than one disk. Each shard sample goes through the same `PretrainTransform` as the cached
data set, seeded by (train.seed, epoch, sample index) so a sample's crops do not depend on which
rank or loader worker reads it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from mammodino.config import Config
from mammodino.data.shard_stream import StreamingShardDataset
from mammodino.data.shards import INDEX_NAME
from mammodino.data.tissue_crops import TissueMap
from mammodino.data.transform import PretrainTransform
from mammodino.errors import ConfigError, NoBreastFoundError
from mammodino.settings import Settings, as_settings

UINT16_MAX = 65535.0


def is_shard_source(source: str | Path) -> bool:
    """True for a shard folder, a `shards.json`, a `.tar` pattern, a URL or a `pipe:` command."""
    text = str(source)
    if text.startswith(("pipe:", "http://", "https://")) or text.endswith(".tar"):
        return True
    path = Path(text)
    return path.name == INDEX_NAME or (path / INDEX_NAME).is_file()


def sample_index(key: str) -> int:
    """A stable non-negative int of a sample key (the `index` of the pretraining sample)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") >> 2


class ShardPretrainTransform:
    """Decoded shard sample -> the pretraining sample dict of docs/ARCHITECTURE.md."""

    def __init__(self, transform: PretrainTransform, seed: int) -> None:
        self.transform = transform
        self.seed = int(seed)

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        pixels = sample["image"]
        intensity_max = UINT16_MAX if pixels.dtype == np.uint16 else 255.0
        tissue = TissueMap.from_mask(sample["mask"], pixels, intensity_max)
        if tissue.tissue_pixels == 0:
            raise NoBreastFoundError(sample["key"], "breast mask is empty", "rerun prepare")
        index = sample_index(sample["key"])
        seed = (self.seed, int(sample["epoch"]), index)
        return self.transform(pixels, tissue, seed, intensity_max, index)


def build_streaming_pretrain_dataset(
    cfg: Settings | Config, source: str | Path, *, epochs: int | None = None
) -> StreamingShardDataset:
    """An endless (or `epochs`-long) stream of pretraining samples from shards."""
    settings = as_settings(cfg)
    if settings.dbt.uses_patient_pairs:
        raise ConfigError(
            "dbt.patient_pairs needs a prepared cache, not shards (a stream cannot fetch another "
            "image of the same patient): set dbt.patient_pairs=false"
        )
    seed = settings.train.seed
    return StreamingShardDataset(
        str(source),
        transform=ShardPretrainTransform(PretrainTransform.from_settings(settings), seed),
        shuffle_buffer=settings.data.shuffle_buffer,
        mix_shards=settings.data.mix_shards,
        seed=seed,
        epochs=epochs,
    )
