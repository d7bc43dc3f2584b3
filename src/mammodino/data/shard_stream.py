"""Streaming dataset over tar shards: local paths, http(s) URLs or `pipe:COMMAND` sources.

Sharding is deterministic: each epoch permutes the shard list with (seed, epoch) and gives shard i
of that order to global worker i mod (world_size * num_workers), so every sample is read exactly
once per epoch across all ranks and loader workers. Each worker reads its shards in groups of
`mix_shards`; a seeded buffer shuffles samples inside a group and empties at the group's end. That
makes the position cheap to resume: (epoch, shards_done, samples_consumed) skips finished groups
without reading them and replays only the current group, discarding what was already consumed.
"""

from __future__ import annotations

import os
import re
import subprocess
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mammodino.data.fork_safety import opencv_single_threaded
from mammodino.data.shards import (
    INDEX_NAME,
    ShardError,
    ShardIndex,
    decode_sample,
    iter_tar_samples,
)

POSITION_KEY = "__position__"
_BRACE_RE = re.compile(r"\{(\d+)\.\.(\d+)\}")


@dataclass
class StreamPosition:
    """Where one loader worker is in its stream: all samples before this point were consumed."""

    epoch: int = 0
    shards_done: int = 0  # shards of this epoch whose samples were all consumed
    samples_consumed: int = 0  # samples consumed from the shard group after those


def expand_sources(sources: str | Path | Sequence[str | Path]) -> list[str]:
    """Shard sources from a folder or `shards.json`, a brace pattern (`a-{000..009}.tar`) or a list."""
    counts = index_counts(sources)
    if counts:
        return list(counts)
    if isinstance(sources, (str, Path)):
        sources = [str(sources)]
    out: list[str] = []
    for source in map(str, sources):
        match = _BRACE_RE.search(source)
        if match is None:
            out.append(source)
            continue
        lo, hi = match.group(1), match.group(2)
        width = len(lo)
        for i in range(int(lo), int(hi) + 1):
            out.extend(
                expand_sources([source[: match.start()] + f"{i:0{width}d}" + source[match.end() :]])
            )
    if not out:
        raise ShardError("no shard sources given")
    return out


def index_counts(sources: str | Path | Sequence[str | Path]) -> dict[str, int]:
    """{shard path: sample count} when `sources` is a shard folder or its `shards.json`, else {}."""
    if not isinstance(sources, (str, Path)) or str(sources).startswith("pipe:"):
        return {}
    path = Path(sources)
    if not (path.is_dir() or path.name == INDEX_NAME):
        return {}
    root = path if path.is_dir() else path.parent
    return {str(root / s.name): s.n_samples for s in ShardIndex.load(path).shards}


@contextmanager
def open_source(source: str, timeout_s: float = 60.0) -> Iterator[IO[bytes]]:
    """A readable byte stream of one shard: a local path, an http(s) URL or `pipe:COMMAND`."""
    if source.startswith("pipe:"):
        proc = subprocess.Popen(source[5:], shell=True, stdout=subprocess.PIPE)
        try:
            yield proc.stdout
        except GeneratorExit:
            proc.kill()  # the reader stopped early; don't leave the command running
            raise
        except Exception:
            # A failed command shows up as a broken tar stream; its exit status says more.
            try:
                code = proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise
            if code != 0:
                raise ShardError(f"shard command exited with status {code}") from None
            raise
        finally:
            proc.stdout.close()
            code = proc.wait()
        if code != 0:
            raise ShardError(f"shard command exited with status {code}")
    elif source.startswith(("http://", "https://")):
        try:
            response = urllib.request.urlopen(source, timeout=timeout_s)  # noqa: S310
        except OSError as err:
            raise ShardError(f"{_short(source)}: cannot fetch ({type(err).__name__})") from None
        with response:
            yield response
    else:
        path = source[7:] if source.startswith("file://") else source
        try:
            stream = open(path, "rb")  # noqa: SIM115 - closed below
        except OSError as err:
            raise ShardError(
                f"{_short(source)}: cannot open shard ({type(err).__name__})"
            ) from None
        with stream:
            yield stream


def _short(source: str) -> str:
    """The last path part of a source: URLs may carry tokens, which must not reach logs."""
    return source.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]


def _layout() -> tuple[int, int]:
    """(rank, world size) from torch.distributed when initialised, else torchrun's variables."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class StreamingShardDataset(IterableDataset):
    """Samples of tar shards, split by rank and loader worker, shuffled, with a resumable position.

    Items are `transform(sample)`, `sample` being `decode_sample(raw)` plus its `epoch` (the sample
    itself when `transform` is None). A dict item carries its worker's position under
    `__position__`; `ResumableLoader` collects it.
    """

    def __init__(
        self,
        sources: str | Path | Sequence[str | Path],
        *,
        transform: Callable[[dict[str, Any]], Any] | None = None,
        shuffle_buffer: int = 1000,
        mix_shards: int = 4,
        seed: int = 0,
        epochs: int | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        timeout_s: float = 60.0,
    ) -> None:
        self.sources = expand_sources(sources)
        self.expected_samples = index_counts(sources)
        self.transform = transform
        self.shuffle_buffer = max(1, shuffle_buffer)
        self.mix_shards = max(1, mix_shards)
        self.seed = seed
        self.epochs = epochs
        self.rank, self.world_size = rank, world_size
        self.timeout_s = timeout_s
        self._resume: dict[int, StreamPosition] = {}
        self._position: dict[int, StreamPosition] = {}
        self._resume_layout: tuple[int, int] | None = None

    def layout(self) -> tuple[int, int, int, int]:
        """(global worker id, number of global workers, rank, workers per rank) in this process."""
        rank, world = _layout()
        rank = self.rank if self.rank is not None else rank
        world = self.world_size if self.world_size is not None else world
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return rank * n_workers + worker, world * n_workers, rank, n_workers

    def shards_of(self, epoch: int, worker: int, n_workers: int) -> list[str]:
        """The shard sources that one global worker reads in one epoch."""
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.sources))
        return [self.sources[i] for i in order[worker::n_workers]]

    def _read(self, source: str) -> Iterator[dict[str, Any]]:
        n = 0
        with open_source(source, self.timeout_s) as stream:
            for n, raw in enumerate(iter_tar_samples(stream, _short(source)), 1):  # noqa: B007
                yield raw
        expected = self.expected_samples.get(source)
        if expected is not None and n != expected:
            raise ShardError(f"{_short(source)}: {n} samples, the index lists {expected}")

    def _group(
        self, shards: Sequence[str], rng: np.random.Generator
    ) -> Iterator[tuple[dict, bool]]:
        """Raw samples of a shard group in buffer-shuffled order, each with `is_last`."""
        buffer: list[dict] = []
        for shard in shards:
            for raw in self._read(shard):
                if len(buffer) < self.shuffle_buffer:
                    buffer.append(raw)
                    continue
                i = int(rng.integers(len(buffer)))
                buffer[i], raw = raw, buffer[i]
                yield raw, False
        while buffer:
            i = int(rng.integers(len(buffer)))
            buffer[i], buffer[-1] = buffer[-1], buffer[i]
            yield buffer.pop(), not buffer

    def __iter__(self) -> Iterator[Any]:
        worker, n_workers, rank, per_rank = self.layout()
        if self._resume_layout not in (None, (n_workers, per_rank)):
            raise ShardError(
                f"stream state was saved with {self._resume_layout[0]} workers in all, "
                f"{self._resume_layout[1]} per rank; now {n_workers} and {per_rank}: resume with the "
                "same ranks x num_workers, or start a new epoch without the state"
            )
        if self.epochs is None and len(self.sources) < n_workers:
            raise ShardError(
                f"{len(self.sources)} shards for {n_workers} loader workers over all ranks: "
                "write more, smaller shards (prepare --shard-samples) or use fewer workers"
            )
        resume = self._resume.get(worker, StreamPosition())
        epoch, done, consumed = resume.epoch, resume.shards_done, resume.samples_consumed
        while self.epochs is None or epoch < self.epochs:
            shards = self.shards_of(epoch, worker, n_workers)
            for start in range(done, len(shards), self.mix_shards):
                group = shards[start : start + self.mix_shards]
                rng = np.random.default_rng([self.seed, epoch, worker, start])
                for n, (raw, is_last) in enumerate(self._group(group, rng)):
                    if n < consumed:
                        continue  # consumed before the resume: replayed, never decoded
                    if not is_last:
                        pos = StreamPosition(epoch, start, n + 1)
                    elif start + len(group) < len(shards):
                        pos = StreamPosition(epoch, start + len(group), 0)
                    else:
                        pos = StreamPosition(epoch + 1, 0, 0)
                    yield self._emit(raw, worker, epoch, pos)
                consumed = 0
            epoch, done, consumed = epoch + 1, 0, 0

    def _emit(self, raw: dict, worker: int, epoch: int, pos: StreamPosition) -> Any:
        item = decode_sample(raw)
        item["epoch"] = epoch  # lets a transform seed its randomness per (epoch, sample)
        if self.transform is not None:
            item = self.transform(item)
        self._position[worker] = pos
        if isinstance(item, dict):
            item[POSITION_KEY] = (worker, asdict(pos))
        return item

    def state_dict(self) -> dict[str, Any]:
        """Positions of the workers that ran in this process (the in-process loader case)."""
        worker, n_workers, _, per_rank = self.layout()
        positions = {**self._resume, **self._position}
        return stream_state(positions, n_workers, per_rank)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from `state` (of this or any rank: it holds positions by global worker)."""
        self._resume_layout = (int(state["n_workers"]), int(state["workers_per_rank"]))
        self._resume = {int(k): StreamPosition(**v) for k, v in state["positions"].items()}
        self._position = {}


def stream_state(
    positions: Mapping[int, StreamPosition], n_workers: int, per_rank: int
) -> dict[str, Any]:
    """The stream state saved in checkpoints: plain ints and dicts (JSON-able)."""
    return {
        "n_workers": n_workers,
        "workers_per_rank": per_rank,
        "positions": {str(k): asdict(v) for k, v in sorted(positions.items())},
    }


def merge_stream_states(states: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One state from the states of all ranks (e.g. gathered with all_gather_object)."""
    positions: dict[str, Any] = {}
    for state in states:
        positions.update(state["positions"])
    return {**states[0], "positions": positions}


def strip_position(collate_fn: Callable[[list], Any]) -> Callable[[list], Any]:
    """Wrap a collate function: positions are removed from samples and the batch's is attached."""
    return _PositionCollate(collate_fn)


class _PositionCollate:
    """Picklable collate wrapper (loader workers may be spawned processes)."""

    def __init__(self, inner: Callable[[list], Any]) -> None:
        self.inner = inner

    def __call__(self, samples: list) -> tuple[Any, Any]:
        # Samples of one batch come from one worker in order: the last position is the batch's.
        position = None
        for sample in samples:
            if isinstance(sample, dict):
                position = sample.pop(POSITION_KEY, position)
        return self.inner(samples), position


class ResumableLoader:
    """A DataLoader over a StreamingShardDataset whose state counts only the batches consumed."""

    def __init__(
        self,
        dataset: StreamingShardDataset,
        *,
        batch_size: int,
        collate_fn: Callable[[list], Any] = torch.utils.data.default_collate,
        num_workers: int = 0,
        **loader_kwargs: Any,
    ) -> None:
        self.dataset = dataset
        self.num_workers = num_workers
        self.loader = DataLoader(
            dataset,
            batch_size=batch_size,
            collate_fn=strip_position(collate_fn),
            num_workers=num_workers,
            **loader_kwargs,
        )
        self._position: dict[int, StreamPosition] = {}

    def __iter__(self) -> Iterator[Any]:
        with opencv_single_threaded():  # the (persistent) workers are forked here
            batches = iter(self.loader)
        for batch, position in batches:
            if position is not None:
                worker, pos = position
                self._position[worker] = StreamPosition(**pos)
            yield batch

    def state_dict(self) -> dict[str, Any]:
        """Positions of this rank's workers after the batches consumed so far."""
        _, world = _layout()
        world = self.dataset.world_size if self.dataset.world_size is not None else world
        per_rank = max(1, self.num_workers)
        positions = {**self.dataset._resume, **self._position}
        return stream_state(positions, world * per_rank, per_rank)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from `state` on the next iteration."""
        self.dataset.load_state_dict(state)
        self._position = {}
