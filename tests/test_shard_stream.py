"""Streaming shards: exactly once per epoch over ranks x workers, seeded shuffle, exact resume."""

from __future__ import annotations

import functools
import http.server
import itertools
import json
import threading

import numpy as np
import pytest

from mammodino.data.shard_stream import (
    ResumableLoader,
    StreamingShardDataset,
    expand_sources,
    merge_stream_states,
)
from mammodino.data.shards import INDEX_NAME, ShardError, ShardWriter

N_SHARDS, PER_SHARD = 8, 5
ALL_KEYS = sorted(f"s{i:03d}" for i in range(N_SHARDS * PER_SHARD))


@pytest.fixture
def shard_dir(tmp_path):
    out = tmp_path / "shards"
    with ShardWriter(out, max_samples=PER_SHARD) as writer:
        for i in range(N_SHARDS * PER_SHARD):
            image = np.full((8, 8), i, np.uint16)
            writer.write(f"s{i:03d}", image, np.zeros((8, 8), np.uint8), {"i": i})
    return out


def _key(sample: dict) -> str:
    return sample["key"]


def _keys(samples: list[dict]) -> list[str]:
    return [s["key"] for s in samples]


def _stream(ds: StreamingShardDataset, n: int | None = None) -> list[dict]:
    return list(itertools.islice(iter(ds), n))


def test_sources_from_folder_index_and_brace_pattern(shard_dir):
    from_folder = expand_sources(shard_dir)
    assert from_folder == expand_sources(shard_dir / INDEX_NAME)
    assert from_folder == expand_sources(str(shard_dir / "shard-{000000..000007}.tar"))
    assert len(from_folder) == N_SHARDS


def test_one_epoch_in_one_process_is_a_seeded_permutation(shard_dir):
    first = _keys(_stream(StreamingShardDataset(shard_dir, epochs=1, seed=3, shuffle_buffer=8)))
    again = _keys(_stream(StreamingShardDataset(shard_dir, epochs=1, seed=3, shuffle_buffer=8)))
    other = _keys(_stream(StreamingShardDataset(shard_dir, epochs=1, seed=4, shuffle_buffer=8)))
    assert sorted(first) == ALL_KEYS
    assert first == again and first != other and first != ALL_KEYS


def test_endless_stream_runs_epoch_after_epoch_in_new_orders(shard_dir):
    keys = _keys(_stream(StreamingShardDataset(shard_dir, shuffle_buffer=8), 3 * len(ALL_KEYS)))
    epochs = [keys[i * 40 : (i + 1) * 40] for i in range(3)]
    assert all(sorted(e) == ALL_KEYS for e in epochs)
    assert epochs[0] != epochs[1] != epochs[2]


@pytest.mark.multiproc
def test_every_sample_exactly_once_across_2_ranks_x_2_workers(shard_dir):
    from torch.utils.data import DataLoader

    seen = {}
    for rank in (0, 1):
        ds = StreamingShardDataset(
            shard_dir, transform=_key, rank=rank, world_size=2, epochs=1, shuffle_buffer=4
        )
        seen[rank] = list(DataLoader(ds, batch_size=None, num_workers=2))
    assert len(seen[0]) == len(seen[1]) == 20  # 8 shards over 4 workers: 2 shards each
    assert sorted(seen[0] + seen[1]) == ALL_KEYS


@pytest.mark.parametrize("cut", [0, 1, 4, 9, 10, 23, 39, 40, 41, 79])
def test_resumed_stream_continues_exactly_where_it_stopped(shard_dir, cut):
    def make() -> StreamingShardDataset:
        return StreamingShardDataset(shard_dir, epochs=2, shuffle_buffer=3, mix_shards=2, seed=7)

    full = _keys(_stream(make()))
    ds = make()
    head = _keys(_stream(ds, cut))
    state = json.loads(json.dumps(ds.state_dict()))  # the state is plain JSON
    resumed = make()
    resumed.load_state_dict(state)
    assert head + _keys(_stream(resumed)) == full
    assert len(full) == 80


def test_resume_skips_finished_shard_groups_without_reading_them(shard_dir):
    ds = StreamingShardDataset(shard_dir, epochs=1, shuffle_buffer=2, mix_shards=2)
    _stream(ds, 27)  # groups of 2 shards = 10 samples: 2 groups done, 7 samples into the third
    state = ds.state_dict()
    assert state["positions"]["0"] == {"epoch": 0, "shards_done": 4, "samples_consumed": 7}
    opened = []
    resumed = StreamingShardDataset(shard_dir, epochs=1, shuffle_buffer=2, mix_shards=2)
    resumed.load_state_dict(state)
    read = resumed._read
    resumed._read = lambda source: (opened.append(source), read(source))[1]
    assert len(_stream(resumed)) == 13
    assert len(opened) == 4  # the current group (replayed) and the last one


@pytest.mark.multiproc
def test_loader_state_resumes_2_ranks_x_2_workers_without_loss_or_repeat(shard_dir):
    def loader(rank: int) -> ResumableLoader:
        ds = StreamingShardDataset(shard_dir, rank=rank, world_size=2, epochs=1, shuffle_buffer=4)
        return ResumableLoader(ds, batch_size=3, collate_fn=_keys, num_workers=2)

    head, states = [], []
    for rank in (0, 1):
        first = loader(rank)
        it = iter(first)
        head += next(it) + next(it) + next(it)  # worker 0, 1, 0 (round robin)
        states.append(first.state_dict())
        del it
    merged = merge_stream_states(states)
    assert merged["n_workers"] == 4 and len(merged["positions"]) == 4
    tail = []
    for rank in (0, 1):
        resumed = loader(rank)
        resumed.load_state_dict(merged)
        tail += [key for batch in resumed for key in batch]
    assert len(head) == 18 and len(tail) == 22
    assert sorted(head + tail) == ALL_KEYS


def test_state_from_another_layout_is_refused(shard_dir):
    ds = StreamingShardDataset(shard_dir, rank=0, world_size=2, epochs=1)
    _stream(ds, 3)
    state = ds.state_dict()
    single = StreamingShardDataset(shard_dir, epochs=1)
    single.load_state_dict(state)
    with pytest.raises(ShardError, match="same ranks x num_workers"):
        _stream(single)


def test_endless_stream_needs_a_shard_per_worker(shard_dir):
    ds = StreamingShardDataset(shard_dir, rank=0, world_size=16)
    with pytest.raises(ShardError, match="8 shards for 16"):
        _stream(ds, 1)


def test_sample_count_differing_from_the_index_is_an_error(shard_dir):
    index = json.loads((shard_dir / INDEX_NAME).read_text())
    index["shards"][0]["n_samples"] = 6
    (shard_dir / INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(ShardError, match="index lists 6"):
        _stream(StreamingShardDataset(shard_dir, epochs=1, seed=0, mix_shards=1, shuffle_buffer=1))


def test_pipe_and_http_sources_stream_the_same_samples(shard_dir):
    local = sorted(str(p) for p in shard_dir.glob("*.tar"))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(shard_dir))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        sources = {
            "local": local,
            "pipe": [f"pipe:cat {p}" for p in local],
            "http": [f"http://127.0.0.1:{port}/shard-{i:06d}.tar" for i in range(N_SHARDS)],
        }
        streams = {
            name: _keys(_stream(StreamingShardDataset(src, epochs=1, shuffle_buffer=5)))
            for name, src in sources.items()
        }
    finally:
        server.shutdown()
    assert streams["local"] == streams["pipe"] == streams["http"]
    assert sorted(streams["local"]) == ALL_KEYS


def test_failing_pipe_command_is_a_shard_error(shard_dir):
    with pytest.raises(ShardError, match="status"):
        _stream(StreamingShardDataset(["pipe:cat /nonexistent/x.tar"], epochs=1))


def test_decoded_samples_keep_16_bit_values(shard_dir):
    sample = _stream(StreamingShardDataset(shard_dir, epochs=1), 1)[0]
    i = sample["meta"]["i"]
    assert sample["image"].dtype == np.uint16 and int(sample["image"][0, 0]) == i
    assert sample["key"] == f"s{i:03d}"
