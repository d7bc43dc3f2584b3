"""Deterministic, resumable order of mixed FFDM + DBT batches with a fixed DBT quota per batch.

The global stream of positions 0, 1, 2, ... is cut into global batches of `batch_size *
world_size` positions (rank r takes positions r, r + w, ... as in `ResumableSampler`, so each
rank's batch of `batch_size` consecutive own positions lies in one global batch). In every global
batch the last `dbt_per_batch * world_size` slots are DBT, the others FFDM: every rank's batch
holds exactly `dbt_per_batch` DBT items, its last ones. Each kind has its own stream counter (the
FFDM slots of batches 0..b-1 come before those of batch b) read like `ResumableSampler` reads its
positions, so FFDM images and DBT volumes each get a fresh permutation per epoch of their own. A key encodes its kind in its lowest bit (`2 * key` FFDM, `2 * key + 1` DBT); the mixed
data set splits it back. Resuming at a position gives the same items, as with `ResumableSampler`,
provided the position is a multiple of the global batch (the training loop only stores those).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch.utils.data

from mammodino.data.resumable_sampler import epoch_permutation, sample_key
from mammodino.errors import ConfigError

FFDM, DBT = 0, 1


def dbt_per_batch(batch_size: int, dbt_fraction: float, n_ffdm: int, n_dbt: int) -> int:
    """DBT items in each per-rank batch: round(batch_size * fraction), at least 1 when > 0."""
    if not 0.0 <= dbt_fraction <= 1.0:
        raise ConfigError(f"data.dbt_fraction must lie in [0, 1], got {dbt_fraction}")
    quota = 0 if dbt_fraction == 0 else max(1, round(batch_size * dbt_fraction))
    if quota and n_dbt == 0:
        raise ConfigError(
            f"data.dbt_fraction={dbt_fraction} but the source holds no DBT volumes; set it to 0"
        )
    if quota < batch_size and n_ffdm == 0:
        raise ConfigError(
            f"data.dbt_fraction={dbt_fraction} leaves FFDM slots but the source holds only DBT "
            "volumes; set data.dbt_fraction=1"
        )
    return quota


def encode_key(kind: int, key: int) -> int:
    """The mixed key of a per-kind sample key."""
    return 2 * int(key) + kind


def decode_key(key: int) -> tuple[int, int]:
    """(kind, per-kind sample key) of a mixed key."""
    key = int(key)
    return key & 1, key >> 1


class MixedSampler(torch.utils.data.Sampler[int]):
    """Endless mixed keys from global position `start_index`, `dbt_per_batch` DBT items per batch."""

    def __init__(
        self,
        n_ffdm: int,
        n_dbt: int,
        batch_size: int,
        dbt_per_batch: int,
        seed: int = 0,
        start_index: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not 0 <= dbt_per_batch <= batch_size:
            raise ValueError(f"dbt_per_batch {dbt_per_batch} outside [0, {batch_size}]")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.batch_size, self.quota = int(batch_size), int(dbt_per_batch)
        self.start_index, self.rank, self.world_size = int(start_index), rank, world_size
        # Each kind has its own order (seed + kind); max(1, n) keeps an unused empty kind valid.
        self.sizes = (max(1, int(n_ffdm)), max(1, int(n_dbt)))
        self.seed = int(seed)
        self._orders: dict[tuple[int, int], np.ndarray] = {}

    def _stream_key(self, kind: int, position: int) -> int:
        """The per-kind sample key at that kind's stream position (permutation cached per epoch)."""
        n = self.sizes[kind]
        epoch, offset = divmod(position, n)
        order = self._orders.get((kind, epoch))
        if order is None:
            # Keep only the epochs in use: one per kind, plus the next at an epoch boundary.
            if len(self._orders) > 4:
                self._orders.clear()
            order = epoch_permutation(n, self.seed + kind, epoch)
            self._orders[(kind, epoch)] = order
        return sample_key(epoch, int(order[offset]), n)

    def key_at(self, position: int) -> int:
        """The mixed key at a global stream position."""
        w = self.world_size
        batch, slot = divmod(position, self.batch_size * w)
        ffdm_slots = (self.batch_size - self.quota) * w
        if slot < ffdm_slots:
            return encode_key(FFDM, self._stream_key(FFDM, batch * ffdm_slots + slot))
        dbt_slots = self.quota * w
        return encode_key(DBT, self._stream_key(DBT, batch * dbt_slots + slot - ffdm_slots))

    def __iter__(self) -> Iterator[int]:
        position = self.start_index + self.rank
        while True:
            yield self.key_at(position)
            position += self.world_size
