"""DBT volumes as hospitals store them, read one slice at a time.

Three layouts become one `Volume` (`open_volume(path)`; `is_volume(path)` tells them from 2-D
images; `mean_projection` gives the image the volume's breast mask is computed on):
- a multi-frame DICOM (Breast Tomosynthesis Image Storage): `read_image(path, frame=i)` decodes
  frame i alone (pydicom.pixels.pixel_array(path, index=i));
- a folder of single-slice DICOMs of one series: slices ordered by their position along the slice
  normal (ImagePositionPatient projected on the normal of ImageOrientationPatient), else by
  InstanceNumber; the spacing is the median distance between neighbouring positions;
- a NumPy volume [Z, H, W] (.npy): memory-mapped, so reading slice i reads only its bytes; the
  spacing comes from an optional sidecar `NAME.json` with {"slice_spacing_mm": 1.0}.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from mammodino.errors import MammoReadError, NotAnImageError
from mammodino.io.meta import MAX_FRAMES, MammoImage
from mammodino.io.reader import (
    _check_size,
    _normalise_array,
    read_frame_count,
    read_image,
    read_metadata,
    sniff_format,
)

# Breast Tomosynthesis Image Storage: a slice folder of this class is a volume even without positions.
BTO_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.13.1.3"
# Trailing axes of this size make a 3-D .npy a colour image, not a volume.
CHANNEL_SIZES = (1, 3, 4)


@dataclass(frozen=True)
class Volume:
    """A DBT volume: where its slices are and how far apart (mm; None when the source is silent)."""

    path: str
    layout: str  # 'multiframe' | 'folder' | 'npy'
    n_slices: int
    slice_spacing_mm: float | None
    files: tuple[str, ...] = field(default=(), repr=False)  # folder: one file per slice, in order

    def read_slice(self, index: int, voi: str = "none") -> MammoImage:
        """Decode slice `index` alone to float32 [0, 1] (bright = dense)."""
        if not 0 <= index < self.n_slices:
            raise IndexError(f"slice {index} out of range for {self.n_slices} slices")
        if self.layout == "multiframe":
            image = read_image(self.path, voi=voi, frame=index)
        elif self.layout == "folder":
            image = read_image(self.files[index], voi=voi)
            image.frame = index
        else:
            image = _read_npy_slice(self.path, index)
        image.meta = replace(
            image.meta, n_frames=self.n_slices, slice_spacing_mm=self.slice_spacing_mm
        )
        return image


def is_slice_folder(path: str | Path) -> bool:
    """True for a folder whose files are the single-slice DICOMs of one DBT series."""
    try:
        return len(_slice_headers(Path(path))) >= 2
    except MammoReadError:
        return False


def is_npy_volume(path: str | Path) -> bool:
    """True for a .npy holding [Z, H, W] (a trailing axis of 1, 3 or 4 is colour, not slices)."""
    shape = _npy_header(os.fspath(path))[0]
    return len(shape) == 3 and shape[-1] not in CHANNEL_SIZES


def is_volume(path: str | Path) -> bool:
    """True for a DBT source: a slice folder, a [Z, H, W] .npy or a multi-frame DICOM."""
    path = Path(path)
    if path.is_dir():
        return is_slice_folder(path)
    fmt = sniff_format(path)
    if fmt == "npy":
        return is_npy_volume(path)
    return fmt == "dicom" and read_frame_count(path) > 1


def mean_projection(volume: Volume, voi: str = "none", max_slices: int = 16) -> np.ndarray:
    """Mean of up to `max_slices` evenly spaced slices, decoded one at a time (for the mask).

    The breast outline of one slice can miss skin-line tissue that lies in other slices; the
    projection shows the whole compressed breast, as the projection images do.
    """
    count = min(volume.n_slices, max(1, max_slices))
    indices = np.unique(np.linspace(0, volume.n_slices - 1, count).round().astype(int))
    total = None
    for index in indices:
        pixels = volume.read_slice(int(index), voi).pixels
        total = pixels.astype(np.float64) if total is None else total + pixels
    return (total / len(indices)).astype(np.float32)


def open_volume(path: str | Path) -> Volume:
    """The volume at `path`: a slice folder, a [Z, H, W] .npy or a (multi-frame) DICOM."""
    path = Path(path)
    if path.is_dir():
        return _open_slice_folder(path)
    fmt = sniff_format(path)
    if fmt == "npy" and is_npy_volume(path):
        shape = _npy_header(str(path))[0]
        _check_size(str(path), int(shape[1]), int(shape[2]))
        if shape[0] > MAX_FRAMES:
            raise NotAnImageError(path, f".npy declares {shape[0]} slices", "save one volume")
        return Volume(str(path), "npy", int(shape[0]), _sidecar_spacing(path))
    meta = read_metadata(path) if fmt == "dicom" else None
    if meta is None:
        raise NotAnImageError(path, f"a {fmt} file is not a DBT volume", "give DICOM or .npy")
    return Volume(str(path), "multiframe", meta.n_frames, meta.slice_spacing_mm)


def _npy_header(path: str) -> tuple[tuple[int, ...], np.dtype]:
    try:
        with open(path, "rb") as f:
            major, _ = np.lib.format.read_magic(f)
            if major == 1:
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    except (ValueError, EOFError, OSError) as err:
        raise NotAnImageError(
            path, f".npy header cannot be read ({type(err).__name__})", "save it again"
        ) from None
    return tuple(int(s) for s in shape), dtype


def _read_npy_slice(path: str, index: int) -> MammoImage:
    shape, dtype = _npy_header(path)
    try:
        # mmap: only slice `index` is read from disk, never the whole volume.
        array = np.load(path, mmap_mode="r", allow_pickle=False)[index]
        pixels, meta = _normalise_array(path, np.asarray(array), dtype, "npy")
    except (ValueError, OSError) as err:
        raise MammoReadError(
            path, f".npy slice cannot be read ({type(err).__name__})", "save it again"
        ) from None
    return MammoImage(pixels, meta, index)


def _sidecar_spacing(path: Path) -> float | None:
    sidecar = path.with_suffix(".json")
    if not sidecar.is_file():
        return None
    try:
        value = json.loads(sidecar.read_text()).get("slice_spacing_mm")
        return float(value) if value is not None else None
    except (ValueError, AttributeError, TypeError):
        raise MammoReadError(
            sidecar, "sidecar is not JSON with a numeric slice_spacing_mm", "fix or remove it"
        ) from None


@dataclass(frozen=True)
class _SliceHeader:
    file: str
    position: np.ndarray | None
    orientation: np.ndarray | None
    instance: int | None
    spacing: float | None


def _slice_headers(folder: Path) -> list[_SliceHeader]:
    """Headers of a folder's DICOM files when they form one DBT series, else []."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    headers, series, sop_classes = [], set(), set()
    for file in files:
        try:
            if sniff_format(file) != "dicom":
                continue
        except MammoReadError:
            continue
        try:
            ds = pydicom.dcmread(str(file), stop_before_pixels=True)
        except (InvalidDicomError, EOFError, OSError, ValueError):
            return []  # prepare then reads (and reports) the files one by one
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            return []  # a multi-frame file is a volume of its own
        series.add(str(ds.get("SeriesInstanceUID", "")))
        sop_classes.add(str(ds.get("SOPClassUID", "")))
        position = ds.get("ImagePositionPatient")
        orientation = ds.get("ImageOrientationPatient")
        instance = ds.get("InstanceNumber")
        spacing = ds.get("SpacingBetweenSlices") or ds.get("SliceThickness")
        headers.append(
            _SliceHeader(
                str(file),
                np.array([float(v) for v in position]) if position else None,
                np.array([float(v) for v in orientation]) if orientation else None,
                int(instance) if instance not in (None, "") else None,
                float(spacing) if spacing not in (None, "") else None,
            )
        )
    if len(headers) < 2 or len(series) != 1 or "" in series:
        return []
    positioned = all(h.position is not None for h in headers)
    distinct = positioned and len({tuple(h.position) for h in headers}) == len(headers)
    # FFDM views of one series carry no distinct positions: only BTO or distinct positions count.
    if sop_classes != {BTO_SOP_CLASS} and not distinct:
        return []
    return headers


def _open_slice_folder(folder: Path) -> Volume:
    headers = _slice_headers(folder)
    if not headers:
        raise NotAnImageError(
            folder,
            "folder is not one DBT series of single-slice DICOMs",
            "keep one series per folder",
        )
    positions = _normal_positions(headers)
    if positions is not None:
        order = np.argsort(positions, kind="stable")
        steps = np.abs(np.diff(positions[order]))
        spacing = float(np.median(steps)) if steps.size and np.median(steps) > 0 else None
    elif all(h.instance is not None for h in headers):
        order = np.argsort([h.instance for h in headers], kind="stable")
        spacing = None
    else:
        raise MammoReadError(
            folder, "slices carry neither ImagePositionPatient nor InstanceNumber", "re-export"
        )
    spacing = spacing if spacing is not None else headers[0].spacing
    files = tuple(headers[int(i)].file for i in order)
    return Volume(str(folder), "folder", len(files), spacing, files)


def _normal_positions(headers: list[_SliceHeader]) -> np.ndarray | None:
    """Each slice's position (mm) along the slice normal; None without ImagePositionPatient."""
    if any(h.position is None for h in headers):
        return None
    points = np.stack([h.position for h in headers])
    orientation = headers[0].orientation
    if orientation is not None and orientation.size == 6:
        normal = np.cross(orientation[:3], orientation[3:])
    else:
        # No orientation: the slices line up along the main axis of their positions.
        centred = points - points.mean(axis=0)
        normal = np.linalg.svd(centred, full_matrices=False)[2][0]
    norm = float(np.linalg.norm(normal))
    return points @ (normal / norm) if norm > 0 else None
