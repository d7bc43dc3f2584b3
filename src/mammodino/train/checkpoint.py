"""Training checkpoints: one consolidated file per save, written atomically, the last N kept.

A checkpoint (`RUN/checkpoints/step_00001234.pt`) holds everything a run needs to continue
exactly: student (backbone + heads), teacher, loss state (centering), optimiser, grad scaler, the
step, the data position (samples consumed: epoch + index into that epoch's permutation), the RNG
states (python, numpy, torch, CUDA) and the resolved config as YAML text. It is written with
`torch.save` and read with `torch.load(weights_only=True)`: plain tensors, numbers, strings, lists
and dicts only, never pickled objects, so opening a checkpoint cannot run code.

Write order: temporary file, fsync, `os.replace` onto the final name, fsync of the folder; then
`last.pt` is re-pointed (a hard link, replaced atomically) and only then are old files removed. A
crash at any moment leaves `last.pt` naming a complete checkpoint.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mammodino.errors import CheckpointError
from mammodino.io.weights import load_torch_file

FORMAT = "mammodino-checkpoint"
VERSION = 1
LAST_NAME = "last.pt"
_STEP_FILE = re.compile(r"^step_(\d+)\.pt$")


def checkpoint_name(step: int) -> str:
    """File name of the checkpoint taken after `step` optimiser steps."""
    return f"step_{step:08d}.pt"


def capture_rng_state() -> dict[str, Any]:
    """RNG states of python, numpy and torch as tensors and plain numbers (weights_only-safe)."""
    version, py_state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {
            "version": version,
            "state": torch.tensor(py_state, dtype=torch.int64),
            "gauss": gauss,
        },
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore what `capture_rng_state` captured."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    keys = npy["keys"].numpy().astype(np.uint32)
    np.random.set_state((npy["kind"], keys, npy["pos"], npy["has_gauss"], npy["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # some platforms cannot open folders; the rename is still atomic there
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_torch_save(payload: dict[str, Any], path: Path) -> None:
    """torch.save to a temporary file, fsync, then rename onto `path` (all or nothing)."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a partial file must not stay on a full disk
        raise
    _fsync_dir(path.parent)


def _point_last(folder: Path, target: Path) -> None:
    """Atomically make `last.pt` the same file as `target` (hard link; a copy where links fail)."""
    tmp = folder / f".{LAST_NAME}.tmp"
    tmp.unlink(missing_ok=True)
    try:
        os.link(target, tmp)
    except OSError:
        shutil.copyfile(target, tmp)
    os.replace(tmp, folder / LAST_NAME)
    _fsync_dir(folder)


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """(step, path) of the step checkpoints in a folder, oldest first."""
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _STEP_FILE.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


class CheckpointManager:
    """Saves consolidated checkpoints into one folder and keeps the newest `keep` of them."""

    def __init__(self, folder: str | Path, keep: int = 3) -> None:
        if keep < 1:
            raise CheckpointError(f"keep_checkpoints must be at least 1, got {keep}")
        self.folder = Path(folder)
        self.keep = keep

    @property
    def last_path(self) -> Path:
        """The `last.pt` file, always a complete checkpoint once one was saved."""
        return self.folder / LAST_NAME

    def save(self, payload: dict[str, Any]) -> Path:
        """Write `payload` (must hold `step`) as this step's checkpoint; returns its path."""
        self.folder.mkdir(parents=True, exist_ok=True)
        payload = {"format": FORMAT, "version": VERSION, **payload}
        path = self.folder / checkpoint_name(int(payload["step"]))
        try:
            atomic_torch_save(payload, path)
            _point_last(self.folder, path)
        except OSError as err:  # full disk, quota, I/O error: last.pt still names the previous one
            (self.folder / f".{LAST_NAME}.tmp").unlink(missing_ok=True)
            raise CheckpointError(
                f"{path.name} not written ({err.strerror or err}); {LAST_NAME} still holds the "
                "previous checkpoint: free space, then run again with --resume"
            ) from None
        for _, old in list_checkpoints(self.folder)[: -self.keep]:
            old.unlink(missing_ok=True)
        return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint file (or the `last.pt` of a folder) safely, or raise CheckpointError."""
    path = Path(path)
    if path.is_dir():
        path = path / LAST_NAME
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint there (was the run started in this folder?)")
    payload = load_torch_file(path, map_location)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path.name}: not a mammodino training checkpoint")
    if payload.get("version") != VERSION:
        raise CheckpointError(
            f"{path.name}: checkpoint version {payload.get('version')} is not {VERSION}"
        )
    return payload
