"""What the reader returns: pixels in [0, 1] and the metadata later stages need."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Largest real detectors are ~4k x 5k (film scans ~7k); anything past this is a corrupt header.
MAX_SIDE = 16384
# DBT volumes hold up to ~150 slices; projections ~25. Beyond this the header is corrupt.
MAX_FRAMES = 4096


@dataclass
class ImageMeta:
    """Header facts of one image; '' or None where the file does not say."""

    laterality: str = ""  # 'L' | 'R' | ''
    view: str = ""  # 'CC' | 'MLO' | 'ML' | ... | ''
    spacing_mm: tuple[float, float] | None = None  # (row, col)
    manufacturer: str = ""
    presentation_intent: str = ""  # 'FOR PRESENTATION' | 'FOR PROCESSING' | ''
    n_frames: int = 1
    slice_spacing_mm: float | None = None
    sop_class_uid: str = ""
    bits_stored: int = 16
    photometric: str = "MONOCHROME2"
    rows: int = 0
    cols: int = 0
    source_format: str = ""  # 'dicom' | 'png' | 'pgm' | 'tiff' | 'npy'
    # Raw PatientID: PHI. Never print or write it; only pseudonymous_id(patient_key, salt).
    patient_key: str = field(default="", repr=False)


@dataclass
class MammoImage:
    """A decoded frame: float32 pixels in [0, 1] (bright = dense) and its metadata."""

    pixels: np.ndarray
    meta: ImageMeta
    frame: int = 0
