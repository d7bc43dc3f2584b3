"""Helpers for the reader, prepare and PHI tests: small DICOMs and synthetic breasts on disk.

Named test_*.py so it sits with the tests it serves; it defines no tests itself.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

DM_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
DM_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.2.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
BREAST_TOMOSYNTHESIS = "1.2.840.10008.5.1.4.1.1.13.1.3"


def synthetic_breast(
    height: int = 256,
    width: int = 192,
    chest_wall_left: bool = True,
    label: bool = True,
    bits: int = 12,
    seed: int = 0,
) -> np.ndarray:
    """uint16 image of a half-ellipse breast on black, with a detached bright label."""
    rng = np.random.default_rng(seed)
    top = 2**bits - 1
    yy, xx = np.mgrid[0:height, 0:width]
    cy, ry, rx = height / 2, height * 0.42, width * 0.6
    inside = ((yy - cy) / ry) ** 2 + (xx / rx) ** 2 <= 1.0
    tissue = 0.45 + 0.25 * np.exp(-(((yy - cy) / (ry / 2)) ** 2) - (xx / (rx / 2)) ** 2)
    image = np.where(inside, tissue, 0.01) + rng.normal(0, 0.005, (height, width))
    if label:  # burned-in marker in the far corner, away from the breast
        image[8:24, width - 28 : width - 8] = 0.98
    image = np.clip(image, 0, 1) * top
    if not chest_wall_left:
        image = image[:, ::-1]
    return np.ascontiguousarray(np.rint(image).astype(np.uint16))


def write_dicom(
    path: Path,
    pixels: np.ndarray | None,
    *,
    sop_class: str = DM_FOR_PRESENTATION,
    bits_stored: int = 12,
    photometric: str = "MONOCHROME2",
    rows: int | None = None,
    cols: int | None = None,
    frames: int | None = None,
    extra: dict | None = None,
) -> Path:
    """An uncompressed DICOM; `pixels` 2-D (or 3-D frames), or None for no PixelData."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MG"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    shape = pixels.shape if pixels is not None else (rows or 4, cols or 4)
    ds.Rows = rows if rows is not None else shape[-2]
    ds.Columns = cols if cols is not None else shape[-1]
    n_frames = frames if frames is not None else (shape[0] if len(shape) == 3 else None)
    if n_frames is not None:
        ds.NumberOfFrames = n_frames
    for key, value in (extra or {}).items():
        setattr(ds, key, value)
    if pixels is not None:
        ds.PixelData = np.ascontiguousarray(pixels.astype("<u2")).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def view_code(meaning: str) -> Sequence:
    """ViewCodeSequence with one item of the given CodeMeaning."""
    item = Dataset()
    item.CodeValue = "R-10242"
    item.CodingSchemeDesignator = "SRT"
    item.CodeMeaning = meaning
    return Sequence([item])


def dbt_extra(laterality: str = "L", slice_spacing_mm: float = 1.0) -> dict:
    """Enhanced multi-frame headers of a DBT volume (Duke BCS-DBT-like layout)."""
    measures = Dataset()
    measures.PixelSpacing = [0.1, 0.1]
    measures.SliceThickness = slice_spacing_mm
    anatomy = Dataset()
    anatomy.FrameLaterality = laterality
    shared = Dataset()
    shared.PixelMeasuresSequence = Sequence([measures])
    shared.FrameAnatomySequence = Sequence([anatomy])
    return {"SharedFunctionalGroupsSequence": Sequence([shared]), "ViewPosition": "CC"}
