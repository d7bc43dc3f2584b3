"""`prepare`: walk SRC, prepare every file in worker processes, write manifest.csv and errors.csv.

Resumable: a source whose row file exists is not redone; outputs are written through temporary
files and os.replace, so an interrupted run leaves no half-written file, only stale temporaries
that the next run removes.
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from mammodino.errors import CacheError, ConfigError
from mammodino.io.pseudonym import pseudonymous_id
from mammodino.io.reader import IMAGE_SUFFIXES, read_image
from mammodino.io.volumes import is_slice_folder, is_volume, mean_projection, open_volume
from mammodino.preprocess.cache import (
    cache_folder,
    read_cached_pair,
    write_csv_atomic,
    write_manifest,
)
from mammodino.preprocess.intensity import (
    IntensityLevels,
    dataset_levels,
    sample_evenly,
    tissue_spread,
)
from mammodino.preprocess.pipeline import CacheOptions, own_levels
from mammodino.preprocess.prepare_source import (
    SourceTask,
    error_row,
    prepare_source,
    row_file,
    source_key,
)

ERROR_COLUMNS = ["file", "error", "reason", "what_to_do"]
SETTINGS_FILE = "prepare_settings.json"


@dataclass
class PrepareResult:
    """What a run did: counts, the skipped files and where the manifest is."""

    prepared: int  # sources in the manifest (new and reused)
    reused: int  # of those, finished by an earlier run
    skipped: int
    images: int  # manifest rows (DBT slices count one each)
    errors: list[dict[str, str]] = field(default_factory=list)
    manifest: Path | None = None
    levels: tuple[float, float] | None = None  # the data set's intensity levels (dataset mode)
    spread: float | None = None  # median breast 1st-99th percentile width in the cache, of [0, 1]

    def summary(self) -> str:
        """The one line the command prints."""
        return f"{self.prepared} prepared, {self.skipped} skipped (see errors.csv)"


def find_sources(src: str | Path) -> list[tuple[str, str]]:
    """(absolute path, path relative to SRC) of every candidate file, sorted.

    SRC is a folder (walked recursively; hidden entries and non-image suffixes such as .txt or
    .csv are ignored), a single file, or a CSV whose `path` (else first) column lists files,
    relative to the CSV's folder.
    """
    src = Path(src)
    if src.is_file() and src.suffix.lower() == ".csv":
        return _sources_from_csv(src)
    if src.is_file():
        return [(str(src.resolve()), src.name)]
    if not src.is_dir():
        raise ConfigError(f"SRC {src} is neither a folder, an image nor a CSV list")
    found = []
    for root, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if root != str(src) and is_slice_folder(root):
            # A folder of single-slice DICOMs of one DBT series is one source: one volume.
            found.append((str(Path(root).resolve()), Path(root).relative_to(src).as_posix()))
            dirs[:] = []
            continue
        for name in sorted(files):
            if name.startswith(".") or Path(name).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            path = Path(root) / name
            found.append((str(path.resolve()), path.relative_to(src).as_posix()))
    return found


def no_sources_message(src: Path) -> str:
    """Why SRC gave nothing to prepare: the suffixes taken and the files ignored, by suffix."""
    if src.is_file():
        return f"{src}: the CSV lists no files; give a `path` column of image files"
    ignored = Counter(
        Path(name).suffix.lower()
        for root, dirs, files in os.walk(src)
        if not any(part.startswith(".") for part in Path(root).relative_to(src).parts)
        for name in files
        if not name.startswith(".")
    )
    taken = " ".join(sorted(s for s in IMAGE_SUFFIXES if s)) + " or no suffix (DICOM)"
    shown = ", ".join(f"{n} {suffix}" for suffix, n in ignored.most_common(5))
    more = f" (+{len(ignored) - 5} more suffixes)" if len(ignored) > 5 else ""
    found = f"{sum(ignored.values())} files with other suffixes ignored: {shown}{more}"
    return (
        f"{src}: no image files found ({found if ignored else 'the folder holds no files'}); "
        f"prepare takes {taken}"
    )


def _sources_from_csv(list_path: Path) -> list[tuple[str, str]]:
    with open(list_path, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames:
            raise ConfigError(f"{list_path}: empty CSV; give a `path` column of image files")
        column = "path" if "path" in reader.fieldnames else reader.fieldnames[0]
        entries = [row[column].strip() for row in reader if row.get(column, "").strip()]
    out = []
    for entry in entries:
        path = Path(entry) if Path(entry).is_absolute() else list_path.parent / entry
        out.append((str(path.resolve()), Path(entry).as_posix()))
    return out


def load_patients(path: str | Path | None) -> dict[str, str]:
    """source -> patient key from a CSV with columns `source` and `patient` (keys get hashed)."""
    if path is None:
        return {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"source", "patient"} - set(reader.fieldnames or [])
        if missing:
            raise ConfigError(
                f"{path}: patients CSV needs columns source, patient; missing {sorted(missing)}"
            )
        return {row["source"].strip(): row["patient"].strip() for row in reader}


def recorded_settings(cache: str | Path) -> dict[str, Any] | None:
    """The settings record of a cache (or an OUT) prepared before, keys it lacks at their value
    of then; None without a record."""
    path = cache_folder(cache) / SETTINGS_FILE
    if not path.exists():
        return None
    # A key an older version did not write (`crop`) had its default then; `intensity` came
    # later than the default it changed, so a record without it means none.
    defaults = {**asdict(CacheOptions()), "intensity": "none"}
    return {**defaults, **json.loads(path.read_text())}


def recorded_intensity(cache: str | Path) -> str | None:
    """The intensity mode a prepared cache was made with (none before the setting existed);
    None for a cache without a settings record."""
    previous = recorded_settings(cache)
    return None if previous is None else previous["intensity"]


def _cached_spread(out: Path, rows: list[dict[str, Any]]) -> float | None:
    """How wide the cached breasts' values are, on a sample of the cache (see NARROW_SPREAD)."""
    by_image = {row["image"]: row for row in rows}
    pairs = []
    for image in sample_evenly(sorted(by_image)):
        try:
            pixels, mask = read_cached_pair(out, by_image[image])
        except CacheError:  # only a diagnostic: a file gone missing is the next run's to redo
            continue
        pairs.append((pixels / 65535.0, mask > 0))
    return tissue_spread(pairs)


def _settings_for(
    settings: CacheOptions, previous: dict[str, Any] | None, paths: list[str]
) -> CacheOptions:
    """Dataset levels: those of OUT's record `previous` (a resume, even with sources added), else
    a sample's. An OUT of another intensity mode is left to `_check_settings` to refuse, unmeasured."""
    previous = previous or {}
    if settings.intensity != "dataset" or settings.levels is not None:
        return settings
    if previous and previous["intensity"] != "dataset":
        return settings
    if previous.get("levels"):
        return replace(settings, levels=tuple(previous["levels"]))
    return with_dataset_levels(settings, paths)


def source_levels(path: str, settings: CacheOptions) -> IntensityLevels | None:
    """One file's own levels (a volume's: of the mean projection its mask comes from); None when
    it cannot be read or holds no breast."""
    # A failure only leaves the file out of the sample: the run reports it, with its reason, when
    # it prepares the file (decoders and corrupt headers raise many types).
    try:
        if is_volume(path):
            pixels = mean_projection(open_volume(path), settings.voi)
        else:
            pixels = read_image(path, voi=settings.voi).pixels
        return own_levels(pixels, settings)
    except Exception:
        return None


def with_dataset_levels(settings: CacheOptions, paths: list[str]) -> CacheOptions:
    """`settings` with the data set's levels measured on a sample of `paths` (dataset mode);
    unchanged (levels None: images kept as read) when no sampled file could be measured."""
    if settings.intensity != "dataset" or settings.levels is not None:
        return settings
    found = dataset_levels(paths, partial(source_levels, settings=settings))
    return settings if found is None else replace(settings, levels=(found.low, found.high))


def _check_settings(
    out: Path, settings: CacheOptions, salt: str | None, previous: dict[str, Any] | None
) -> None:
    """Refuse to mix caches made with different settings or salts in one OUT (its record:
    `previous`, None for a new OUT)."""
    record = {**asdict(settings), "salt_check": pseudonymous_id("salt-check", salt)}
    record = json.loads(json.dumps(record))  # as the file holds it: levels a list
    path = out / SETTINGS_FILE
    if previous is not None:
        previous, current = _output_settings(previous), _output_settings(record)
        if previous != current:
            changed = sorted(k for k in current if previous.get(k) != current[k])
            hint = ""
            if "intensity" in changed:  # e.g. a cache from before the setting: it was none
                hint = f" or --intensity {previous['intensity']}"
            raise ConfigError(
                f"{out} was prepared with other settings ({', '.join(changed)}); use a new OUT"
                + hint
            )
        return
    path.write_text(json.dumps(record, indent=1))


def _output_settings(record: dict[str, Any]) -> dict[str, Any]:
    """The settings record less what cannot change the output: no crop, no crop margin."""
    if record["crop"]:  # both records hold it: the old one is filled with the defaults
        return record
    return {k: v for k, v in record.items() if k != "margin"}


def _remove_stale_temporaries(out: Path) -> None:
    for sub in ("images", "masks", "pectoral", "rows"):
        folder = out / sub
        if folder.is_dir():
            for stale in folder.glob(".*.tmp*"):
                stale.unlink(missing_ok=True)


def _finished(task: SourceTask) -> bool:
    return row_file(task.out, source_key(task.source, task.salt)).exists()


def _run_task(task: SourceTask) -> tuple[str, list[dict[str, Any]] | None, dict[str, str] | None]:
    """Worker entry: rows on success, one error row on failure; never raises."""
    try:
        return task.source, prepare_source(task), None
    except Exception as err:  # any failure of one file must not stop the run
        return task.source, None, error_row(task.source, err)


def _init_worker() -> None:
    import cv2

    cv2.setNumThreads(1)  # one process per core: OpenCV's own threads would oversubscribe


def _execute(
    tasks: list[SourceTask], workers: int, advance: Callable[[], None]
) -> Iterable[tuple[str, list[dict[str, Any]] | None, dict[str, str] | None]]:
    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            yield _run_task(task)
            advance()
        return
    # spawn: the parent may hold threads (progress display) that fork would copy mid-state.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker) as pool:
        futures = [pool.submit(_run_task, task) for task in tasks]
        for future in as_completed(futures):
            yield future.result()
            advance()


def run_prepare(
    src: str | Path,
    out: str | Path,
    settings: CacheOptions | None = None,
    *,
    workers: int = 2,
    salt: str | None = None,
    patients: dict[str, str] | None = None,
    patient_rule: str = "auto",
    progress: Callable[[int], Callable[[], None]] | None = None,
) -> PrepareResult:
    """Prepare every file of SRC into OUT; `progress(total)` returns a per-file callback."""
    settings = settings or CacheOptions()
    sources = find_sources(src)
    if not sources:
        raise ConfigError(no_sources_message(Path(src)))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    previous = recorded_settings(out)
    settings = _settings_for(settings, previous, [path for path, _ in sources])
    _check_settings(out, settings, salt, previous)
    _remove_stale_temporaries(out)
    patients = patients or {}
    tasks = [
        SourceTask(path, source, str(out), settings, salt, patients.get(source, ""), patient_rule)
        for path, source in sources
    ]
    todo = [t for t in tasks if not _finished(t)]
    advance = progress(len(todo)) if progress else (lambda: None)
    errors = []
    for _, _, error in _execute(todo, workers, advance):
        if error is not None:
            errors.append(error)
    rows, prepared = [], 0
    for task in tasks:  # manifest in SRC order, only for sources that are still listed
        path = row_file(out, source_key(task.source, task.salt))
        if path.exists():
            rows.extend(json.loads(path.read_text()))
            prepared += 1
    manifest = write_manifest(out, rows)
    errors.sort(key=lambda e: e["file"])
    write_csv_atomic(out / "errors.csv", ERROR_COLUMNS, errors)
    return PrepareResult(
        prepared=prepared,
        reused=len(tasks) - len(todo),
        skipped=len(errors),
        images=len(rows),
        errors=errors,
        manifest=manifest,
        levels=settings.levels,
        spread=_cached_spread(out, rows),
    )
