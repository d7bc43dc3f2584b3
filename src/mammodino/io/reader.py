"""Read a mammogram (DICOM, PNG 8/16-bit, PGM, TIFF, .npy) into float32 [0, 1], never via 8-bit.

`read_image(path, voi=..., frame=...)` returns a `MammoImage`; `read_metadata(path)` and
`read_frame_count(path)` parse headers only. Declared sizes are checked before any pixel buffer
is allocated, and every failure is a `MammoReadError` subclass with a one-line, PHI-free message.
"""

from __future__ import annotations

import math
import os
import re
import struct
from pathlib import Path

import numpy as np

from mammodino.errors import (
    ImageTooLargeError,
    MammoReadError,
    NotAnImageError,
    TruncatedFileError,
)
from mammodino.io.dicom_header import read_header
from mammodino.io.dicom_pixels import decode_frame, to_unit_range
from mammodino.io.meta import MAX_SIDE, ImageMeta, MammoImage

VOI_MODES = ("none", "window", "voi_lut")
IMAGE_SUFFIXES = {".dcm", ".dicom", ".dic", ".png", ".pgm", ".tif", ".tiff", ".npy", ""}
# Views a file name may carry as a token (the rarer DICOM codes, e.g. AT or FB, are common words).
NAME_VIEWS = ("CC", "MLO", "ML", "LM", "LMO", "XCCL", "XCCM")
NAME_SIDES = {"L": "L", "LEFT": "L", "R": "R", "RIGHT": "R"}
_PGM_HEADER = re.compile(
    rb"^(P[25])\s+(?:#[^\n]*\s+)*(\d+)\s+(?:#[^\n]*\s+)*(\d+)\s+(?:#[^\n]*\s+)*(\d+)\s"
)


def sniff_format(path: str | Path) -> str:
    """'dicom' | 'png' | 'pgm' | 'tiff' | 'npy' from the file's first bytes (not its name)."""
    path = str(path)
    with open(path, "rb") as f:
        head = f.read(132)
    if not head:
        raise NotAnImageError(path, "empty file (0 bytes)", "copy the file again")
    if head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:2] in (b"P5", b"P2"):
        return "pgm"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    raise NotAnImageError(
        path, "unrecognised format (not DICOM, PNG, PGM, TIFF or .npy)", "leave it out of SRC"
    )


def _check_size(path: str, rows: int, cols: int) -> None:
    if rows > MAX_SIDE or cols > MAX_SIDE:
        raise ImageTooLargeError(
            path, f"declares {rows} x {cols} pixels, beyond any mammogram", "the file is corrupt"
        )


def _unit_from_integers(array: np.ndarray, max_value: float) -> np.ndarray:
    return (array.astype(np.float32) / np.float32(max(max_value, 1.0))).clip(0.0, 1.0)


def _gray(array: np.ndarray) -> np.ndarray:
    """Colour rasters become grey by ITU-R 601 luminance, kept at their bit depth."""
    if array.ndim == 3:
        channels = array[..., :3].astype(np.float32)
        weights = np.array([0.299, 0.587, 0.114], np.float32)
        return channels @ weights if channels.shape[-1] == 3 else channels[..., 0]
    return array


def _check_png_chunks(path: str) -> None:
    """Every chunk must end inside the file: OpenCV allocates a chunk's declared length first."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        at = 8
        while at + 8 <= size:
            f.seek(at)
            length, kind = struct.unpack(">I4s", f.read(8))
            if at + 12 + length > size:
                raise TruncatedFileError(
                    path, f"PNG chunk declares {length} bytes past the file end", "copy it again"
                )
            if kind == b"IEND":
                return
            at += 12 + length


def _read_png(path: str) -> tuple[np.ndarray, ImageMeta]:
    import cv2

    with open(path, "rb") as f:
        head = f.read(26)
    if len(head) < 26:
        raise TruncatedFileError(path, "PNG ends inside its header", "copy the file again")
    cols, rows = struct.unpack(">II", head[16:24])
    _check_size(path, rows, cols)
    _check_png_chunks(path)
    # cv2 keeps 16-bit samples; colour comes as BGR, so reverse to RGB before luminance.
    array = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if array is None:
        raise TruncatedFileError(
            path, "PNG data cannot be decoded (truncated or corrupt)", "copy it again"
        )
    if array.ndim == 3:
        array = array[..., 2::-1] if array.shape[-1] >= 3 else array
    bits = 16 if array.dtype == np.uint16 else 8
    pixels = _unit_from_integers(_gray(array), 2**bits - 1)
    return pixels, _raster_meta(pixels, bits, "png")


def _read_pgm(path: str) -> tuple[np.ndarray, ImageMeta]:
    with open(path, "rb") as f:
        head = f.read(512)
        match = _PGM_HEADER.match(head)
        if match is None:
            raise NotAnImageError(path, "PGM header cannot be parsed", "re-export the image")
        magic, cols, rows, max_value = match.group(1), *(int(v) for v in match.groups()[1:])
        _check_size(path, rows, cols)
        f.seek(match.end())
        body = f.read()
    if magic == b"P2":
        values = np.array(body.split(), dtype=np.int64)
        expected = rows * cols
        if values.size < expected:
            raise TruncatedFileError(
                path, f"PGM holds {values.size} of {expected} values", "copy it again"
            )
        array = values[:expected].reshape(rows, cols)
    else:
        dtype = np.dtype(">u2") if max_value > 255 else np.dtype("u1")
        expected = rows * cols * dtype.itemsize
        if len(body) < expected:
            raise TruncatedFileError(
                path, f"PGM holds {len(body)} of {expected} bytes", "copy it again"
            )
        array = np.frombuffer(body[:expected], dtype=dtype).reshape(rows, cols)
    pixels = _unit_from_integers(array, max_value)
    return pixels, _raster_meta(pixels, max(1, math.ceil(math.log2(max_value + 1))), "pgm")


def _read_tiff(path: str) -> tuple[np.ndarray, ImageMeta]:
    import cv2
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:  # the header alone: size checked before decoding
            page = tif.pages[0]
            shape = page.shape
    except Exception as err:  # tifffile raises many types for broken files
        raise TruncatedFileError(
            path, f"TIFF header cannot be read ({type(err).__name__})", "copy the file again"
        ) from None
    _check_size(path, int(shape[0]), int(shape[1]))
    # OpenCV decodes LZW/Deflate/PackBits without extra packages; tifffile covers the rest.
    array = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if array is None:
        try:
            array = tifffile.imread(path, key=0)
        except Exception as err:
            raise TruncatedFileError(
                path, f"TIFF cannot be decoded ({type(err).__name__})", "save it uncompressed"
            ) from None
    elif array.ndim == 3 and array.shape[-1] >= 3:
        array = array[..., 2::-1]  # OpenCV's BGR back to RGB
    return _normalise_array(path, array, array.dtype, "tiff")


def _read_npy(path: str) -> tuple[np.ndarray, ImageMeta]:
    try:
        with open(path, "rb") as f:  # the header alone: shape is checked before any allocation
            major, _ = np.lib.format.read_magic(f)
            read_npy_header = (
                np.lib.format.read_array_header_1_0
                if major == 1
                else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read_npy_header(f)
        if len(shape) not in (2, 3):
            raise NotAnImageError(
                path, f".npy has {len(shape)} dimensions, expected 2", "save one image"
            )
        _check_size(path, int(shape[0]), int(shape[1]))
        array = np.load(path, allow_pickle=False)
    except MammoReadError:
        raise
    except (ValueError, EOFError, OSError) as err:
        raise TruncatedFileError(
            path, f".npy cannot be read ({type(err).__name__})", "save it again"
        ) from None
    return _normalise_array(path, array, dtype, "npy")


def _normalise_array(path: str, array: np.ndarray, dtype: np.dtype, fmt: str):
    array = _gray(array)
    if np.issubdtype(dtype, np.integer):
        bits = dtype.itemsize * 8
        pixels = _unit_from_integers(array, float(np.iinfo(dtype).max))
    elif dtype == np.bool_:
        bits, pixels = 1, array.astype(np.float32)
    elif np.issubdtype(dtype, np.floating):
        # Float images are taken as already in [0, 1]; non-finite values are not an image.
        if not np.isfinite(array).all():
            raise NotAnImageError(path, f"{fmt} holds NaN or infinite values", "save finite values")
        bits, pixels = 32, np.clip(array.astype(np.float32), 0.0, 1.0)
    else:
        raise NotAnImageError(
            path, f"{fmt} has unsupported dtype {dtype}", "save integers or floats"
        )
    return pixels, _raster_meta(pixels, bits, fmt)


def _raster_meta(pixels: np.ndarray, bits: int, fmt: str) -> ImageMeta:
    return ImageMeta(
        bits_stored=bits, rows=pixels.shape[0], cols=pixels.shape[1], source_format=fmt
    )


_RASTER_READERS = {"png": _read_png, "pgm": _read_pgm, "tiff": _read_tiff, "npy": _read_npy}


def read_metadata(path: str | Path) -> ImageMeta:
    """Header facts only (DICOM: no pixel decoding; rasters: decoded to learn the size)."""
    path = os.fspath(path)
    if sniff_format(path) == "dicom":
        return _guarded(path, read_header, path).meta
    return read_image(path).meta


def read_frame_count(path: str | Path) -> int:
    """Number of frames (DBT slices) without decoding any; 1 for 2-D files."""
    path = os.fspath(path)
    if sniff_format(path) != "dicom":
        return 1
    return _guarded(path, read_header, path).meta.n_frames


def read_image(path: str | Path, *, voi: str = "none", frame: int | None = None) -> MammoImage:
    """Decode one frame to float32 [0, 1] (bright = dense) with its metadata.

    `voi`: 'none' normalises by bits stored; 'window' applies the first WindowCenter/Width with
    the header's VOILUTFunction; 'voi_lut' the first VOI LUT Sequence item. Where the header has
    no window or LUT, 'none' applies. `frame=None` reads the central frame of a multi-frame file.
    """
    if voi not in VOI_MODES:
        raise ValueError(f"voi must be one of {VOI_MODES}, got {voi!r}")
    path = os.fspath(path)
    fmt = sniff_format(path)
    if fmt == "dicom":
        header = _guarded(path, read_header, path)
        n_frames = header.meta.n_frames
        index = n_frames // 2 if frame is None else int(frame)
        if not 0 <= index < n_frames:
            raise IndexError(f"frame {index} out of range for {n_frames} frames")
        raw = decode_frame(path, header, index)
        pixels = _guarded(path, to_unit_range, raw, header, voi)
        return _checked(path, MammoImage(pixels, header.meta, index))
    if frame not in (None, 0):
        raise IndexError(f"frame {frame} out of range for a single-frame {fmt} file")
    pixels, meta = _guarded(path, _RASTER_READERS[fmt], path)
    # Rasters carry no header: the file name is the only place a side or view can come from.
    meta.laterality, meta.view = laterality_view_from_name(path)
    return _checked(path, MammoImage(pixels, meta, 0))


def laterality_view_from_name(path: str | Path) -> tuple[str, str]:
    """(laterality, view) from the fields of a structured file name (split at `_`, `-`, `.` or
    spaces): `L`/`R`/`LEFT`/`RIGHT`, a view such as `CC`/`MLO`, or both run together (`RMLO`);
    '' where the name says nothing, contradicts itself (`L` and `R`) or is one word
    (`right.png` names a file, it is not a header field)."""
    sides, views = set(), set()
    tokens = re.split(r"[_\-.\s]+", Path(path).stem.upper())
    for token in tokens if len(tokens) > 1 else []:
        if token in NAME_SIDES:
            sides.add(NAME_SIDES[token])
        elif token in NAME_VIEWS:
            views.add(token)
        elif token[:1] in ("L", "R") and token[1:] in NAME_VIEWS:
            sides.add(token[0])
            views.add(token[1:])
    return (
        sides.pop() if len(sides) == 1 else "",
        views.pop() if len(views) == 1 else "",
    )


def _guarded(path: str, function, *args):
    """Call `function`; any failure that is not already typed becomes a MammoReadError.

    Files are untrusted input: a garbled header can make pydicom, numpy or a codec raise
    almost anything, and one bad file must never stop a run with an untyped exception.
    """
    try:
        return function(*args)
    except MammoReadError:
        raise
    except MemoryError:
        raise ImageTooLargeError(path, "image does not fit in memory", "check its header") from None
    except Exception as err:
        raise MammoReadError(
            path, f"file cannot be read ({type(err).__name__})", "re-export the image"
        ) from None


def _checked(path: str, image: MammoImage) -> MammoImage:
    """The reader's promise: a non-empty 2-D float32 image (every path clips to [0, 1])."""
    pixels = image.pixels
    if pixels.ndim != 2 or pixels.size == 0:
        raise NotAnImageError(path, f"decoded pixels have shape {pixels.shape}", "re-export it")
    image.pixels = pixels.astype(np.float32, copy=False)
    return image
