"""Weights files read without running code, each failure one line that names the file.

`check_torch_file` / `check_safetensors_file` tell at once (no torch import) whether a file's
first bytes fit its kind (eval/weights_source.py checks a whole `--weights` argument with them).
`load_torch_file` (torch.load with weights_only=True) and `load_safetensors_file` load, turning
every failure (an empty file, a PNG renamed .safetensors, text named .pt, a pickle of Python
objects) into a `CheckpointError` that says what the file is and what to give instead.
"""

from __future__ import annotations

import json
import struct
import warnings
from pathlib import Path
from typing import Any

from mammodino.errors import CheckpointError

# Folders `load_backbone` takes, by the file that marks each kind.
RUN_MARKER = "checkpoints"
EXPORT_MARKER = "architecture.json"
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
_ZIP, _PICKLE = b"PK\x03\x04", b"\x80"
GIVE_WEIGHTS = (
    "give a run folder, an export, a .pt/.pth/.safetensors weights file or random:ARCH/PATCH"
)


def describe_bytes(head: bytes) -> str:
    """What a file starting with `head` (its first 256 bytes or more) looks like, in words."""
    signatures = {
        b"\x89PNG": "a PNG image",
        b"\xff\xd8\xff": "a JPEG image",
        b"II*\x00": "a TIFF image",
        b"MM\x00*": "a TIFF image",
        b"\x93NUMPY": "a NumPy array",
        _ZIP: "a zip archive (torch.save writes those: name it .pt)",
        _PICKLE: "a pickle (torch.save writes those: name it .pt)",
    }
    for magic, words in signatures.items():
        if head.startswith(magic):
            return words
    if head[128:132] == b"DICM":
        return "a DICOM file"
    if len(head) > 8 and head[8:9] == b"{":
        return "a safetensors file (name it .safetensors)"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "unknown binary data"
    return "text"


def _head(path: Path) -> bytes:
    with path.open("rb") as handle:
        return handle.read(512)


def check_torch_file(path: Path) -> None:
    """Raise CheckpointError unless `path` starts like a torch.save file (zip or pickle)."""
    head = _head(path)
    if not head:
        raise CheckpointError(f"{path.name}: empty file, not a PyTorch checkpoint; {GIVE_WEIGHTS}")
    if not head.startswith((_ZIP, _PICKLE)):
        raise CheckpointError(
            f"{path.name}: not a PyTorch checkpoint (it is {describe_bytes(head)}); {GIVE_WEIGHTS}"
        )


def check_safetensors_file(path: Path) -> None:
    """Raise CheckpointError unless `path` starts with a safetensors header (length + JSON)."""
    head = _head(path)
    if not head:
        raise CheckpointError(f"{path.name}: empty file, not a safetensors file; {GIVE_WEIGHTS}")
    size = path.stat().st_size
    header_len = struct.unpack("<Q", head[:8])[0] if len(head) >= 8 else size
    if not 2 <= header_len <= size - 8 or head[8:9] != b"{":
        raise CheckpointError(
            f"{path.name}: not a safetensors file (it is {describe_bytes(head)}); {GIVE_WEIGHTS}"
        )


def load_safetensors_file(path: Path) -> dict[str, Any]:
    """The tensors of a .safetensors file, or one-line CheckpointError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    check_safetensors_file(path)
    try:
        return load_file(path)
    except (SafetensorError, json.JSONDecodeError, OSError) as err:
        raise CheckpointError(f"{path.name}: not a readable safetensors file ({err})") from None


def load_torch_file(path: Path, map_location: Any = "cpu") -> Any:
    """`torch.load(path, weights_only=True)`: tensors and plain containers only, or one line.

    A pickle holding other Python objects is refused (unpickling them could run code); torch's
    "Detected pickle protocol" warning about such files is not shown before the refusal.
    """
    import torch

    check_torch_file(path)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Detected pickle protocol", UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for foreign/corrupt files
        text = str(err).strip()
        if "Weights only load failed" in text:
            raise CheckpointError(
                f"{path.name}: not a tensor-only checkpoint: it holds pickled Python objects, "
                "refused because loading them could run code; re-save its state_dict with "
                "torch.save, or convert it to safetensors"
            ) from None
        first_line = text.splitlines()[0][:160] if text else type(err).__name__
        raise CheckpointError(f"{path.name}: not a readable checkpoint ({first_line})") from None
