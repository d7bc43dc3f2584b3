"""One DICOM frame to pixels: decoder choice, decoding, then rescale and VOI to [0, 1].

`pydicom.pixels.pixel_array(path, index=i)` decodes a single frame, so a DBT volume is never held
in memory whole. The header comes from io/dicom_header.py (`read_header`).
"""

from __future__ import annotations

import functools
import struct
from pathlib import Path

import numpy as np
import pydicom

from mammodino.errors import MammoReadError, TruncatedFileError, UnsupportedTransferSyntaxError
from mammodino.io.dicom_header import DicomHeader
from mammodino.io.voi import apply_voi_lut, apply_window

# GDCM, pydicom's first JPEG 2000 plugin, starts one decoding thread per core for every frame:
# on 2 cores a 4664 x 3064 MG1 frame took 556 ms wall for 778 ms CPU, against 503 ms on one
# thread with pylibjpeg-openjpeg. One thread per decode is also what lets `prepare --workers N`
# scale with N instead of oversubscribing the cores.
PREFERRED_PLUGINS = ("pylibjpeg",)


@functools.cache  # asked once per frame: DBT volumes have dozens
def preferred_plugin(transfer_syntax: str) -> str:
    """A single-threaded plugin where GDCM would decode, if one is installed; else "" (default)."""
    try:
        available = pydicom.pixels.get_decoder(transfer_syntax).available_plugins
    except (NotImplementedError, ValueError):  # not a (supported) syntax: pydicom's error says so
        return ""
    if "gdcm" not in available:
        return ""
    return next((name for name in PREFERRED_PLUGINS if name in available), "")


def decode_frame(path: str | Path, header: DicomHeader, frame: int) -> np.ndarray:
    """Raw stored values of one frame (no rescale), as decoded by pydicom's plugins."""
    index = frame if header.meta.n_frames > 1 else None
    plugin = preferred_plugin(header.transfer_syntax)
    try:
        try:
            array = pydicom.pixels.pixel_array(str(path), index=index, decoding_plugin=plugin)
        except Exception:
            if not plugin:
                raise
            # GDCM reads some codestreams that OpenJPEG refuses: give it the file before failing.
            array = pydicom.pixels.pixel_array(str(path), index=index)
    except (NotImplementedError, RuntimeError) as err:
        text = str(err)
        if "Unable to decode" in text or "not support" in text or "No plugins" in text:
            name = getattr(pydicom.uid.UID(header.transfer_syntax), "name", header.transfer_syntax)
            raise UnsupportedTransferSyntaxError(
                path,
                f"no installed decoder handles {name} at {header.meta.bits_stored} bits",
                "re-export uncompressed or as JPEG 2000 / JPEG-LS",
            ) from None
        raise MammoReadError(path, "pixel data cannot be decoded", "copy the file again") from None
    except (ValueError, EOFError, struct.error) as err:
        raise TruncatedFileError(
            path, f"pixel data cannot be decoded ({type(err).__name__})", "copy the file again"
        ) from None
    except Exception as err:  # decoders raise many types on corrupt headers; none may escape
        raise MammoReadError(
            path, f"pixel data cannot be decoded ({type(err).__name__})", "re-export the image"
        ) from None
    if array.ndim == 3:  # colour Secondary Capture: a weighted luminance keeps it grey
        array = array[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return array


def to_unit_range(raw: np.ndarray, header: DicomHeader, voi: str = "none") -> np.ndarray:
    """Rescale, then VOI (none | window | voi_lut), then MONOCHROME1 inversion -> [0, 1]."""
    slope, intercept = header.rescale
    values = raw.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    if voi == "window" and header.windows:
        center, width = header.windows[0]
        unit = apply_window(values, center, width, header.voi_function)
    elif voi == "voi_lut" and header.voi_lut is not None:
        unit = apply_voi_lut(values, *header.voi_lut)
    else:
        # Normalise by the range bits stored can hold, mapped through the rescale.
        bits = header.meta.bits_stored
        low_raw, high_raw = (
            (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if header.signed else (0, 2**bits - 1)
        )
        ends = sorted((low_raw * slope + intercept, high_raw * slope + intercept))
        unit = (values - np.float32(ends[0])) / np.float32(max(ends[1] - ends[0], 1e-12))
        unit = np.clip(unit, 0.0, 1.0)
    if header.meta.photometric == "MONOCHROME1":
        unit = 1.0 - unit
    # A garbled LUT or window can still give NaN; such pixels carry no information.
    unit = np.nan_to_num(unit, nan=0.0, posinf=1.0, neginf=0.0)
    return np.clip(unit, 0.0, 1.0).astype(np.float32, copy=False)
