"""WebDataset-compatible tar shards of the prepared cache, for data sets larger than one disk.

Each sample is three consecutive tar members sharing a key: `KEY.png` (uint16 image),
`KEY.mask.png` (uint8 breast mask, 0/255) and `KEY.json` (the manifest row minus file paths).
WebDataset groups members by the part of the name before the first dot, so keys never contain dots.
A shard is written to `NAME.tar.tmp` and renamed when complete, so a reader never sees half a shard;
`shards.json` lists every shard with its sample count, size and SHA-256.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from mammodino.errors import MammodinoError
from mammodino.preprocess.cache import read_cached_bytes, read_manifest

INDEX_NAME = "shards.json"
INDEX_FORMAT = "mammodino-shards/1"
IMAGE_EXT = "png"
MASK_EXT = "mask.png"
META_EXT = "json"
_KEY_RE = re.compile(r"^[A-Za-z0-9_\-]+$")
# Manifest columns that name files inside the cache; the shard carries their bytes instead.
_PATH_COLUMNS = ("image", "mask")


class ShardError(MammodinoError):
    """A shard or its index is missing, corrupt or cannot be written."""


@dataclass
class ShardInfo:
    """One shard as listed in the index."""

    name: str
    n_samples: int
    n_bytes: int
    sha256: str


@dataclass
class ShardIndex:
    """The list of shards of one data set (`shards.json`)."""

    shards: list[ShardInfo] = field(default_factory=list)
    format: str = INDEX_FORMAT

    @property
    def n_samples(self) -> int:
        """Samples over all shards."""
        return sum(s.n_samples for s in self.shards)

    def save(self, path: str | Path) -> None:
        """Write the index atomically as JSON."""
        path = Path(path)
        payload = {"format": self.format, "shards": [asdict(s) for s in self.shards]}
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(payload, indent=1))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path) -> ShardIndex:
        """Read `shards.json` (a folder holding it or the file itself)."""
        path = Path(path)
        if path.is_dir():
            path = path / INDEX_NAME
        try:
            payload = json.loads(path.read_text())
            shards = [ShardInfo(**s) for s in payload["shards"]]
        except FileNotFoundError:
            raise ShardError(f"{path}: shard index not found (write shards first)") from None
        except (ValueError, KeyError, TypeError) as err:
            raise ShardError(f"{path}: not a shard index ({type(err).__name__})") from None
        if payload.get("format") != INDEX_FORMAT:
            raise ShardError(f"{path}: unknown shard index format {payload.get('format')!r}")
        return cls(shards=shards)


def check_key(key: str) -> str:
    """Return `key` if WebDataset can use it as a sample key (letters, digits, `_`, `-`)."""
    if not _KEY_RE.match(key):
        raise ShardError(f"sample key {key!r} must use only letters, digits, '_' and '-'")
    return key


def encode_png(array: np.ndarray) -> bytes:
    """Lossless PNG of a 2-D uint8 or uint16 array (16 bits kept)."""
    import cv2

    if array.ndim != 2 or array.dtype not in (np.uint8, np.uint16):
        raise ShardError(f"expected a 2-D uint8/uint16 array, got {array.dtype} {array.shape}")
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(array))
    if not ok:
        raise ShardError(f"PNG encoding failed for a {array.dtype} {array.shape} array")
    return buf.tobytes()


def decode_png(data: bytes) -> np.ndarray:
    """A 2-D array from PNG bytes, with its stored bit depth (uint8 or uint16)."""
    import cv2

    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None or array.ndim != 2:
        raise ShardError("shard member is not a single-channel PNG")
    return array


class ShardWriter:
    """Writes samples into numbered tar shards of at most `max_samples` samples or `max_bytes`."""

    def __init__(
        self,
        out_dir: str | Path,
        *,
        prefix: str = "shard",
        max_samples: int = 1000,
        max_bytes: int = 1 << 30,
    ) -> None:
        if max_samples < 1 or max_bytes < 1:
            raise ShardError("max_samples and max_bytes must be positive")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.max_samples = max_samples
        self.max_bytes = max_bytes
        self.index = ShardIndex()
        self._tar: tarfile.TarFile | None = None
        self._file: IO[bytes] | None = None
        self._hash: Any = None
        self._count = 0
        self._bytes = 0
        self._keys: set[str] = set()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._abort()

    @property
    def _current_name(self) -> str:
        return f"{self.prefix}-{len(self.index.shards):06d}.tar"

    def _open(self) -> None:
        tmp = self.out_dir / (self._current_name + ".tmp")
        # Kept open across write() calls; _finish or _abort closes them.
        self._file = open(tmp, "wb")  # noqa: SIM115
        self._hash = hashlib.sha256()
        self._tar = tarfile.open(fileobj=_HashingWriter(self._file, self._hash), mode="w|")  # noqa: SIM115
        self._count = 0
        self._bytes = 1024  # the two zero blocks that end a tar

    def _finish(self) -> None:
        """Close the open shard and rename it into place."""
        assert self._tar is not None and self._file is not None
        self._tar.close()
        n_bytes = self._file.tell()
        self._file.close()
        name = self._current_name
        os.replace(self.out_dir / (name + ".tmp"), self.out_dir / name)
        self.index.shards.append(ShardInfo(name, self._count, n_bytes, self._hash.hexdigest()))
        self._tar = self._file = None

    def _abort(self) -> None:
        """Drop a half-written shard; completed shards and their index stay valid."""
        if self._file is not None:
            self._tar.close()  # flushes into the file that is deleted next; keeps tarfile quiet
            self._file.close()
            (self.out_dir / (self._current_name + ".tmp")).unlink(missing_ok=True)
            self._tar = self._file = None
        self.index.save(self.out_dir / INDEX_NAME)

    def write_encoded(self, key: str, image_png: bytes, mask_png: bytes, meta: Mapping) -> None:
        """Add one sample whose image and mask are already PNG bytes."""
        check_key(key)
        if key in self._keys:
            raise ShardError(f"sample key {key!r} written twice")
        self._keys.add(key)
        members = [
            (f"{key}.{IMAGE_EXT}", image_png),
            (f"{key}.{MASK_EXT}", mask_png),
            (f"{key}.{META_EXT}", json.dumps(dict(meta), sort_keys=True).encode()),
        ]
        # A tar member takes a 512-byte header plus its data padded to 512 bytes.
        size = sum(512 + -(-len(data) // 512) * 512 for _, data in members)
        full = self._count >= self.max_samples or self._bytes + size > self.max_bytes
        if self._tar is not None and self._count > 0 and full:
            self._finish()
        if self._tar is None:
            self._open()
        for name, data in members:
            info = tarfile.TarInfo(name)
            # Fixed owner, mode and time: the same samples always give byte-identical shards.
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            self._tar.addfile(info, io.BytesIO(data))
        self._count += 1
        self._bytes += size

    def write(self, key: str, image: np.ndarray, mask: np.ndarray, meta: Mapping) -> None:
        """Add one sample: uint16 image, uint8 mask of the same size, JSON-able metadata."""
        if image.dtype != np.uint16 or mask.dtype != np.uint8 or image.shape != mask.shape:
            raise ShardError(
                f"sample {key!r}: need a uint16 image and a uint8 mask of one size, got "
                f"{image.dtype} {image.shape} and {mask.dtype} {mask.shape}"
            )
        self.write_encoded(key, encode_png(image), encode_png(mask), meta)

    def close(self) -> ShardIndex:
        """Finish the last shard and write the index."""
        if self._tar is not None:
            self._finish()
        self.index.save(self.out_dir / INDEX_NAME)
        return self.index


class _HashingWriter:
    """File wrapper that hashes what is written, so a shard is hashed without a second read."""

    def __init__(self, file: IO[bytes], digest: Any) -> None:
        self._file, self._digest = file, digest

    def write(self, data: bytes) -> int:
        self._digest.update(data)
        return self._file.write(data)

    def tell(self) -> int:
        return self._file.tell()


class _TailReader:
    """Read-through stream that counts bytes and keeps the last 1024, to check the tar's end."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream, self.n_bytes, self.tail = stream, 0, b""

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self.n_bytes += len(data)
        self.tail = (self.tail + data)[-1024:]
        return data

    def drain(self) -> None:
        """Read to the end (tarfile stops at the first zero block)."""
        while self.read(1 << 16):
            pass


def iter_tar_samples(stream: IO[bytes], source: str = "shard") -> Iterator[dict[str, Any]]:
    """Raw samples of a tar stream: {'__key__': key, 'png': bytes, 'mask.png': bytes, ...}."""
    reader = _TailReader(stream)
    current: dict[str, Any] | None = None
    try:
        with tarfile.open(fileobj=reader, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                base = member.name.rsplit("/", 1)[-1]
                if "." not in base:
                    continue
                key, ext = base.split(".", 1)
                if current is not None and current["__key__"] != key:
                    yield current
                    current = None
                if current is None:
                    current = {"__key__": key}
                data = tar.extractfile(member).read()
                if len(data) != member.size:
                    raise ShardError(f"{source}: truncated at member {base!r}")
                current[ext] = data
        reader.drain()
    except (tarfile.TarError, OSError, EOFError) as err:
        raise ShardError(f"{source}: unreadable tar stream ({type(err).__name__})") from None
    # tarfile takes a stream cut between members for a complete archive; a real one ends with
    # two zero blocks and a size that is a multiple of 512.
    if reader.n_bytes % 512 or reader.tail != bytes(1024):
        raise ShardError(f"{source}: truncated tar stream (no end-of-archive blocks)")
    if current is not None:
        yield current


def decode_sample(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Decode a raw sample into {'key', 'image' uint16, 'mask' uint8, 'meta' dict}."""
    key = raw.get("__key__", "?")
    missing = [ext for ext in (IMAGE_EXT, MASK_EXT, META_EXT) if ext not in raw]
    if missing:
        raise ShardError(f"sample {key!r} lacks members {missing}")
    return {
        "key": key,
        "image": decode_png(raw[IMAGE_EXT]),
        "mask": decode_png(raw[MASK_EXT]),
        "meta": json.loads(raw[META_EXT]),
    }


def _meta_value(value: str) -> Any:
    """Manifest cells are text; numbers become numbers in the JSON metadata."""
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def write_shards(
    rows: Iterable[Mapping[str, str]],
    cache_dir: str | Path,
    out_dir: str | Path,
    *,
    max_samples: int = 1000,
    max_bytes: int = 1 << 30,
    prefix: str = "shard",
) -> ShardIndex:
    """Copy the cached PNGs of `rows` (manifest rows) into shards; PNG bytes are not re-encoded."""
    cache_dir = Path(cache_dir)
    with ShardWriter(out_dir, prefix=prefix, max_samples=max_samples, max_bytes=max_bytes) as w:
        for row in rows:
            image = read_cached_bytes(cache_dir / row["image"])
            mask = read_cached_bytes(cache_dir / row["mask"])
            meta = {k: _meta_value(v) for k, v in row.items() if k not in _PATH_COLUMNS}
            w.write_encoded(row["id"], image, mask, meta)
        return w.close()


def shard_prepared_cache(
    cache_dir: str | Path,
    out_dir: str | Path,
    *,
    max_samples: int = 1000,
    max_bytes: int = 1 << 30,
    shuffle_seed: int | None = 0,
) -> ShardIndex:
    """Write a prepared cache as shards; rows are shuffled (seeded) so each shard mixes patients."""
    rows = read_manifest(cache_dir, required=("id", *_PATH_COLUMNS))
    if shuffle_seed is not None:
        order = np.random.default_rng(shuffle_seed).permutation(len(rows))
        rows = [rows[i] for i in order]
    return write_shards(rows, cache_dir, out_dir, max_samples=max_samples, max_bytes=max_bytes)
