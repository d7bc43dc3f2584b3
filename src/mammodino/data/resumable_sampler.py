"""Deterministic, resumable order of pretraining samples.

The data stream is an endless sequence of positions 0, 1, 2, ... Position p belongs to epoch
e = p // n and reads image perm_e[p % n], where perm_e is a permutation of the n images seeded by
(seed, e). The sampler yields *sample keys* `e * n + image_index`; the dataset turns a key back into
(epoch, image_index) and seeds that sample's random crops, masks and augmentations from
(seed, epoch, image_index). Samples therefore depend neither on the worker that loads them nor on
the process history, and a run resumed at position p (the number of samples the optimiser has
consumed) sees exactly the samples it would have seen without the interruption.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch.utils.data


def sample_key(epoch: int, index: int, n: int) -> int:
    """The key of image `index` in `epoch` for a data set of n images."""
    return epoch * n + index


def split_key(key: int, n: int) -> tuple[int, int]:
    """(epoch, image index) of a sample key; a plain index < n is epoch 0."""
    return divmod(int(key), n)


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The image order of one epoch: a permutation of range(n) seeded by (seed, epoch)."""
    return np.random.default_rng([seed, epoch, 0x5EED]).permutation(n)


class ResumableSampler(torch.utils.data.Sampler[int]):
    """Endless sample keys from global position `start_index`, a fresh permutation per epoch.

    With several processes, rank r of world_size w takes the global positions r, r + w, r + 2w, ...
    counted from `start_index` (a global position: samples consumed by all ranks together).
    """

    def __init__(
        self,
        n: int,
        seed: int = 0,
        start_index: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
    ) -> None:
        if n <= 0:
            raise ValueError(f"a sampler needs at least one sample, got n={n}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.n = n
        self.seed = seed
        self.start_index = start_index
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle

    def key_at(self, position: int) -> int:
        """The sample key at a global stream position."""
        epoch, offset = divmod(position, self.n)
        if not self.shuffle:
            return sample_key(epoch, offset, self.n)
        return sample_key(epoch, int(epoch_permutation(self.n, self.seed, epoch)[offset]), self.n)

    def __iter__(self) -> Iterator[int]:
        position = self.start_index + self.rank
        cached_epoch, order = -1, np.arange(self.n)
        while True:
            epoch, offset = divmod(position, self.n)
            if self.shuffle and epoch != cached_epoch:
                cached_epoch, order = epoch, epoch_permutation(self.n, self.seed, epoch)
            yield sample_key(epoch, int(order[offset]), self.n)
            position += self.world_size
