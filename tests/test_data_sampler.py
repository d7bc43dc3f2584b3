"""ResumableSampler: one permutation per epoch, exact resume, ranks partition the stream."""

from __future__ import annotations

from itertools import islice

import pytest

from mammodino.data.resumable_sampler import (
    ResumableSampler,
    epoch_permutation,
    sample_key,
    split_key,
)


def take(sampler: ResumableSampler, count: int) -> list[int]:
    return list(islice(iter(sampler), count))


def test_each_epoch_is_a_permutation_and_epochs_differ():
    n = 7
    keys = take(ResumableSampler(n, seed=3), 3 * n)
    for epoch in range(3):
        chunk = keys[epoch * n : (epoch + 1) * n]
        assert [split_key(k, n)[0] for k in chunk] == [epoch] * n
        assert sorted(split_key(k, n)[1] for k in chunk) == list(range(n))
    orders = [[split_key(k, n)[1] for k in keys[e * n : (e + 1) * n]] for e in range(3)]
    assert orders[0] != orders[1] != orders[2]


def test_resume_continues_the_same_stream():
    full = take(ResumableSampler(10, seed=1), 37)
    for start in (0, 5, 10, 23):
        assert take(ResumableSampler(10, seed=1, start_index=start), 37 - start) == full[start:]


def test_ranks_partition_the_global_stream():
    full = take(ResumableSampler(9, seed=2, start_index=4), 24)
    parts = [take(ResumableSampler(9, 2, 4, rank=r, world_size=3), 8) for r in range(3)]
    assert [parts[p % 3][p // 3] for p in range(24)] == full


def test_seed_changes_order_and_key_helpers_round_trip():
    assert list(epoch_permutation(50, 0, 0)) != list(epoch_permutation(50, 1, 0))
    assert split_key(sample_key(4, 3, 11), 11) == (4, 3)
    assert take(ResumableSampler(4, shuffle=False), 6) == [0, 1, 2, 3, 4, 5]
    with pytest.raises(ValueError):
        ResumableSampler(0)
    with pytest.raises(ValueError):
        ResumableSampler(3, rank=2, world_size=2)
