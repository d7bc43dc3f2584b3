"""DICOM mammogram headers: parsed and checked before any pixel is allocated.

Handles Digital Mammography (For Presentation / For Processing), Secondary Capture (CBIS-DDSM,
NEMA MG1), and multi-frame Breast Tomosynthesis. `read_header` refuses non-images, missing or
truncated pixel data and absurd sizes, and collects what decoding needs (`DicomHeader`): the
metadata, rescale and VOI; io/dicom_pixels.py then decodes one frame at a time.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from mammodino.errors import (
    ImageTooLargeError,
    MammoReadError,
    NoPixelDataError,
    NotAnImageError,
    TruncatedFileError,
)
from mammodino.io.meta import MAX_FRAMES, MAX_SIDE, ImageMeta
from mammodino.io.voi import VOI_FUNCTIONS

PIXEL_DATA_TAG_LE = b"\xe0\x7f\x10\x00"
PIXEL_DATA_TAG_BE = b"\x7f\xe0\x00\x10"
SEQUENCE_DELIMITER_LE = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
UNDEFINED_LENGTH = 0xFFFFFFFF
TAIL_BYTES = 1024
# Spacings outside this range are vendor quirks (GE writes a bogus PixelSpacing of ~50 mm).
PLAUSIBLE_SPACING_MM = (0.005, 5.0)
VIEW_CODE_MEANINGS = {
    "cranio-caudal": "CC",
    "medio-lateral oblique": "MLO",
    "medio-lateral": "ML",
    "latero-medial": "LM",
    "latero-medial oblique": "LMO",
    "cranio-caudal exaggerated laterally": "XCCL",
    "cranio-caudal exaggerated medially": "XCCM",
    "caudo-cranial (from below)": "FB",
    "superolateral to inferomedial oblique": "SIO",
}
KNOWN_VIEWS = {"CC", "MLO", "ML", "LM", "LMO", "XCCL", "XCCM", "FB", "SIO", "XCC", "AT"}


@dataclass
class DicomHeader:
    """What the reader needs from a DICOM file, parsed once without touching pixel data."""

    dataset: Dataset
    meta: ImageMeta
    transfer_syntax: str
    pixel_data_offset: int
    pixel_data_length: int
    rescale: tuple[float, float] = (1.0, 0.0)
    signed: bool = False
    windows: list[tuple[float, float]] = field(default_factory=list)
    voi_function: str = "LINEAR"
    voi_lut: tuple[list[int], list[int]] | None = None


def is_dicom(path: str | Path) -> bool:
    """True when the file has the DICOM preamble magic 'DICM' at byte 128."""
    with open(path, "rb") as f:
        f.seek(128)
        return f.read(4) == b"DICM"


def _first(value, default=None):
    if value is None or value == "":
        return default
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return value[0] if len(value) else default
    return value


def _shared_item(ds: Dataset, sequence: str) -> Dataset | None:
    """First item of `sequence` in the shared (else first per-frame) functional groups."""
    for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        seq = ds.get(groups)
        if seq and sequence in seq[0] and seq[0].get(sequence):
            return seq[0].get(sequence)[0]
    return None


def _laterality(ds: Dataset) -> str:
    value = ds.get("ImageLaterality") or ds.get("Laterality")
    if not value:
        anatomy = _shared_item(ds, "FrameAnatomySequence")
        value = anatomy.get("FrameLaterality") if anatomy is not None else None
    value = str(value or "").strip().upper()
    return value if value in ("L", "R") else ""


def _view(ds: Dataset) -> str:
    value = str(ds.get("ViewPosition") or "").strip().upper()
    if value:
        return value
    codes = ds.get("ViewCodeSequence")
    if codes:
        meaning = str(codes[0].get("CodeMeaning", "")).strip().lower()
        if meaning in VIEW_CODE_MEANINGS:
            return VIEW_CODE_MEANINGS[meaning]
    # Scanned-film Secondary Captures (CBIS-DDSM) put the view in PatientOrientation.
    orientation = ds.get("PatientOrientation")
    orientation = "".join(orientation) if isinstance(orientation, (list, tuple)) else orientation
    orientation = str(orientation or "").strip().upper()
    return orientation if orientation in KNOWN_VIEWS else ""


def _spacing(ds: Dataset) -> tuple[float, float] | None:
    measures = _shared_item(ds, "PixelMeasuresSequence")
    candidates = [
        ds.get("PixelSpacing"),
        measures.get("PixelSpacing") if measures is not None else None,
        ds.get("ImagerPixelSpacing"),
    ]
    low, high = PLAUSIBLE_SPACING_MM
    for value in candidates:
        try:
            row, col = float(value[0]), float(value[1])
        except (TypeError, ValueError, IndexError):
            continue
        if low <= row <= high and low <= col <= high:
            return (row, col)
    return None


def _slice_spacing(ds: Dataset) -> float | None:
    measures = _shared_item(ds, "PixelMeasuresSequence")
    for source in (measures, ds):
        if source is None:
            continue
        for key in ("SpacingBetweenSlices", "SliceThickness"):
            value = source.get(key)
            if value not in (None, ""):
                try:
                    return float(value)
                except (TypeError, ValueError):
                    continue
    return None


def _rescale(ds: Dataset) -> tuple[float, float]:
    source = _shared_item(ds, "PixelValueTransformationSequence") or ds
    slope = float(_first(source.get("RescaleSlope"), 1.0) or 1.0)
    intercept = float(_first(source.get("RescaleIntercept"), 0.0) or 0.0)
    return slope, intercept


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]


def _windows(source: Dataset) -> list[tuple[float, float]]:
    centers, widths = source.get("WindowCenter"), source.get("WindowWidth")
    if centers is None or widths is None:
        return []
    windows = []
    for center, width in zip(_as_list(centers), _as_list(widths), strict=False):
        try:
            c, w = float(center), float(width)
        except (TypeError, ValueError):
            continue
        if np.isfinite(c) and np.isfinite(w) and w > 0:
            windows.append((c, w))
    return windows


def _voi_lut(ds: Dataset) -> tuple[list[int], list[int]] | None:
    """First VOI LUT Sequence item as (descriptor, table), or None when absent or unusable."""
    sequence = ds.get("VOILUTSequence")
    if not sequence or "LUTDescriptor" not in sequence[0] or "LUTData" not in sequence[0]:
        return None
    try:
        descriptor = [int(v) for v in _as_list(sequence[0].LUTDescriptor)]
        data = sequence[0].LUTData
        if isinstance(data, bytes):  # OW data comes as bytes; US as a list
            data = np.frombuffer(data[: len(data) // 2 * 2], dtype="<u2").tolist()
        table = [int(v) for v in _as_list(data)]
    except (TypeError, ValueError, AttributeError):
        return None
    if len(descriptor) != 3 or not table or not 1 <= descriptor[2] <= 16:
        return None
    return descriptor, table


def _voi(ds: Dataset) -> tuple[list[tuple[float, float]], str, tuple[list[int], list[int]] | None]:
    """Windows, VOI LUT function and VOI LUT; unusable values are dropped (VOI is optional)."""
    source = _shared_item(ds, "FrameVOILUTSequence") or ds
    function = str(source.get("VOILUTFunction") or ds.get("VOILUTFunction") or "LINEAR")
    function = function.strip().upper()
    if function not in VOI_FUNCTIONS:  # unknown values: LINEAR, the standard's default
        function = "LINEAR"
    return _windows(source), function, _voi_lut(ds)


def _locate_pixel_data(path: str, f, little_endian: bool, implicit_vr: bool) -> tuple[int, int]:
    """(value offset, length) of PixelData from the file position where the header stopped."""
    start = f.tell()
    tag = f.read(4)
    if tag not in (PIXEL_DATA_TAG_LE, PIXEL_DATA_TAG_BE):
        return -1, 0
    order = "<" if little_endian else ">"
    if implicit_vr:
        raw = f.read(4)
        header_len = 8
    else:
        f.read(4)  # VR (OB/OW) and two reserved bytes
        raw = f.read(4)
        header_len = 12
    if len(raw) < 4:
        raise TruncatedFileError(path, "file ends inside the PixelData header", "copy it again")
    return start + header_len, struct.unpack(order + "I", raw)[0]


def _check_pixel_module(path: str, ds: Dataset) -> None:
    """Refuse headers whose Image Pixel module the decoders cannot work with."""
    try:
        allocated = int(ds.get("BitsAllocated"))
        stored = int(ds.get("BitsStored"))
        samples = int(ds.get("SamplesPerPixel", 1))
        representation = int(ds.get("PixelRepresentation"))
        photometric = str(ds.get("PhotometricInterpretation") or "")
        slope, intercept = _rescale(ds)
        int(_first(ds.get("NumberOfFrames"), 1) or 1)
    except (TypeError, ValueError, OverflowError):
        raise MammoReadError(
            path, "image header lacks or garbles a pixel description element", "re-export it"
        ) from None
    valid = (
        allocated in (1, 8, 16, 32)
        and 1 <= stored <= allocated
        and samples in (1, 3)
        and representation in (0, 1)
        and photometric
        and np.isfinite(slope)
        and np.isfinite(intercept)
        and slope != 0
    )
    if not valid:
        raise MammoReadError(
            path,
            f"invalid pixel description ({allocated} bits allocated, {stored} stored, "
            f"{samples} samples, {photometric or 'no photometric'})",
            "re-export the image",
        )


def read_header(path: str | Path) -> DicomHeader:
    """Parse and check a DICOM header: non-images, missing pixels, absurd sizes, truncation."""
    path = str(path)
    try:
        with open(path, "rb") as f:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
            implicit_vr, little_endian = ds.original_encoding
            offset, length = _locate_pixel_data(path, f, bool(little_endian), bool(implicit_vr))
    except InvalidDicomError:
        raise NotAnImageError(
            path, "not a valid DICOM file", "check that it is a mammogram"
        ) from None
    except (EOFError, struct.error, OSError, ValueError) as err:
        raise TruncatedFileError(
            path, f"DICOM header cannot be parsed ({type(err).__name__})", "copy the file again"
        ) from None
    sop_class = str(ds.get("SOPClassUID", ""))
    sop_name = getattr(ds.get("SOPClassUID"), "name", sop_class) or "unknown SOP class"
    if "Rows" not in ds or "Columns" not in ds:
        raise NotAnImageError(path, f"not an image ({sop_name})", "leave non-image objects out")
    if offset < 0:
        raise NoPixelDataError(path, "DICOM image without PixelData", "export it with its pixels")
    _check_pixel_module(path, ds)
    rows, cols = int(ds.Rows), int(ds.Columns)
    n_frames = int(_first(ds.get("NumberOfFrames"), 1) or 1)
    if rows < 1 or cols < 1 or n_frames < 1:
        raise MammoReadError(
            path, f"header declares {rows} x {cols} x {n_frames} frames", "re-export the image"
        )
    if rows > MAX_SIDE or cols > MAX_SIDE or n_frames > MAX_FRAMES:
        raise ImageTooLargeError(
            path,
            f"header declares {rows} x {cols} x {n_frames} frames, beyond any mammogram",
            "the header is corrupt; re-export the image",
        )
    transfer_syntax = str(ds.file_meta.get("TransferSyntaxUID", "1.2.840.10008.1.2"))
    file_size = os.path.getsize(path)
    if length == UNDEFINED_LENGTH:
        # The delimiter closes the fragments; trailing padding elements may follow it.
        with open(path, "rb") as f:
            f.seek(max(file_size - TAIL_BYTES, offset))
            tail = f.read(TAIL_BYTES)
        if SEQUENCE_DELIMITER_LE not in tail:
            raise TruncatedFileError(
                path, "compressed pixel data ends without its delimiter", "copy the file again"
            )
    else:
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        expected = rows * cols * n_frames * samples * int(ds.get("BitsAllocated", 16)) // 8
        if offset + length > file_size or length < expected:
            raise TruncatedFileError(
                path,
                f"pixel data holds {min(length, file_size - offset)} of {expected} bytes",
                "copy the file again",
            )
    windows, function, lut = _voi(ds)
    meta = ImageMeta(
        laterality=_laterality(ds),
        view=_view(ds),
        spacing_mm=_spacing(ds),
        manufacturer=str(ds.get("Manufacturer") or ""),
        presentation_intent=str(ds.get("PresentationIntentType") or ""),
        n_frames=n_frames,
        slice_spacing_mm=_slice_spacing(ds) if n_frames > 1 else None,
        sop_class_uid=sop_class,
        bits_stored=int(ds.get("BitsStored", ds.get("BitsAllocated", 16)) or 16),
        photometric=str(ds.get("PhotometricInterpretation") or "MONOCHROME2").upper(),
        rows=rows,
        cols=cols,
        patient_key=str(ds.get("PatientID") or ""),
        source_format="dicom",
    )
    return DicomHeader(
        dataset=ds,
        meta=meta,
        transfer_syntax=transfer_syntax,
        pixel_data_offset=offset,
        pixel_data_length=length,
        rescale=_rescale(ds),
        signed=int(ds.get("PixelRepresentation", 0) or 0) == 1,
        windows=windows,
        voi_function=function,
        voi_lut=lut,
    )
