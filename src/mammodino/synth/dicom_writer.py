"""Write FFDM and DBT pixels as real DICOM (explicit VR little endian, uncompressed).

FFDM: Digital Mammography X-Ray Image Storage - For Presentation. DBT: Breast Tomosynthesis Image
Storage, one multi-frame file with shared and per-frame functional groups, laid out like the
Duke BCS-DBT files (MONOCHROME2, window in the frame VOI groups, slice spacing in Pixel Measures).
All take `DicomMeta`; `write_dbt_slices` writes the other common DBT layout, a folder of
single-slice files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

FFDM_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.2"
DBT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.13.1.3"
MANUFACTURER = "mammodino-synth"
# SNOMED CT view codes (DICOM CID 4014) and the patient orientation of each laterality/view.
VIEW_CODES = {"CC": ("399162004", "cranio-caudal"), "MLO": ("399368009", "medio-lateral oblique")}
PATIENT_ORIENTATION = {
    ("L", "CC"): "A\\R",
    ("R", "CC"): "P\\L",
    ("L", "MLO"): "A\\FR",
    ("R", "MLO"): "P\\FL",
}


@dataclass(frozen=True)
class DicomMeta:
    """Header content of one synthetic image or volume (no PHI: ids are pseudonyms)."""

    patient_id: str
    study_key: str  # anything unique per study; UIDs derive from it deterministically
    instance_key: str  # unique per file
    laterality: str  # 'L' or 'R'
    view: str  # 'CC' or 'MLO'
    spacing_mm: float
    bits_stored: int = 12
    slice_spacing_mm: float | None = None  # DBT only
    thickness_mm: float = 0.0  # compressed breast thickness
    series_number: int = 1
    instance_number: int = 1
    study_date: str = "20260101"


def derived_uid(key: str) -> str:
    """A valid, deterministic UID from any text (2.25 root with a 128-bit integer)."""
    return "2.25." + str(int.from_bytes(hashlib.sha256(key.encode()).digest()[:16], "big"))


def _window(pixels: np.ndarray, bits: int) -> tuple[float, float]:
    """Window centre and width covering the breast intensities (1st-99.5th percentile of tissue)."""
    sample = pixels.reshape(-1)[:: max(1, pixels.size // 500_000)]
    tissue = sample[sample > (1 << bits) * 0.05]
    if tissue.size == 0:
        return float((1 << bits) / 2), float(1 << bits)
    low, high = np.percentile(tissue, [1.0, 99.5])
    return float(round((low + high) / 2)), float(max(round(high - low), 1))


def _base_dataset(
    meta: DicomMeta,
    sop_class: str,
    pixels: np.ndarray,
    window: tuple[float, float] | None = None,
) -> Dataset:
    """Patient, study, series, equipment and image-pixel modules shared by FFDM and DBT."""
    if meta.bits_stored not in (12, 14, 16) or pixels.dtype != np.uint16:
        raise ValueError("pixels must be uint16 with 12, 14 or 16 bits stored")
    if int(pixels.max(initial=0)) >= (1 << meta.bits_stored):
        raise ValueError(f"pixel values exceed {meta.bits_stored} bits stored")
    file_meta = FileMetaDataset()
    file_meta.MediaStorageSOPClassUID = sop_class
    file_meta.MediaStorageSOPInstanceUID = derived_uid("sop:" + meta.instance_key)
    file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = file_meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = file_meta.MediaStorageSOPInstanceUID
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = f"SYNTH^{meta.patient_id}"
    ds.PatientID = meta.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "F"
    ds.StudyInstanceUID = derived_uid("study:" + meta.study_key)
    ds.SeriesInstanceUID = derived_uid(
        f"series:{meta.study_key}:{meta.series_number}:{meta.laterality}{meta.view}"
    )
    # One frame of reference per breast and series, so the slices of a volume written one file
    # per slice share it.
    ds.FrameOfReferenceUID = derived_uid(
        f"frame:{meta.study_key}:{meta.series_number}:{meta.laterality}{meta.view}"
    )
    ds.StudyID = meta.study_key[-8:]
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = meta.study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.Modality = "MG"
    ds.SeriesNumber = meta.series_number
    ds.InstanceNumber = meta.instance_number
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = "phantom"
    ds.SoftwareVersions = "mammodino"
    ds.BodyPartExamined = "BREAST"
    ds.BodyPartThickness = round(float(meta.thickness_mm), 1)
    ds.ImageLaterality = meta.laterality
    ds.Laterality = meta.laterality
    ds.ViewPosition = meta.view
    ds.PatientOrientation = PATIENT_ORIENTATION[(meta.laterality, meta.view)]
    code = Dataset()
    code.CodeValue, code.CodeMeaning = VIEW_CODES[meta.view]
    code.CodingSchemeDesignator = "SCT"
    ds.ViewCodeSequence = Sequence([code])
    ds.BurnedInAnnotation = "NO"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(pixels.shape[-2]), int(pixels.shape[-1])
    ds.BitsAllocated = 16
    ds.BitsStored = meta.bits_stored
    ds.HighBit = meta.bits_stored - 1
    ds.PixelRepresentation = 0
    spacing = [round(float(meta.spacing_mm), 6)] * 2
    ds.PixelSpacing = spacing
    ds.ImagerPixelSpacing = spacing
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    centre, width = window or _window(pixels, meta.bits_stored)
    ds.WindowCenter, ds.WindowWidth = centre, width
    ds.VOILUTFunction = "LINEAR"
    ds.LossyImageCompression = "00"
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    return ds


def _save(ds: Dataset, path: str | Path) -> Path:
    """Write atomically: a crash never leaves a half-written file under the final name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    ds.save_as(tmp, enforce_file_format=True)
    os.replace(tmp, path)
    return path


def write_ffdm_dicom(path: str | Path, pixels: np.ndarray, meta: DicomMeta) -> Path:
    """Write a 2-D uint16 image as Digital Mammography X-Ray Image - For Presentation."""
    if pixels.ndim != 2:
        raise ValueError("FFDM pixels must be 2-D [rows, cols]")
    ds = _base_dataset(meta, FFDM_SOP_CLASS, pixels)
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.DetectorType = "DIRECT"
    ds.DistanceSourceToDetector = 660.0
    ds.EstimatedRadiographicMagnificationFactor = 1.0
    return _save(ds, path)


def write_dbt_dicom(path: str | Path, volume: np.ndarray, meta: DicomMeta) -> Path:
    """Write a uint16 volume [slices, rows, cols] as one multi-frame Breast Tomosynthesis Image.

    Frame 1 is the slice nearest the detector; frame positions step by `meta.slice_spacing_mm`.
    """
    return _save(_dbt_dataset(volume, meta), path)


def write_dbt_slices(folder: str | Path, volume: np.ndarray, meta: DicomMeta) -> list[Path]:
    """Write a volume as one single-frame Breast Tomosynthesis file per slice (slice_0001.dcm,
    ...), the layout some archives use: one series, top-level ImagePositionPatient and
    InstanceNumber per slice, one window for all."""
    window = _window(volume, meta.bits_stored)
    paths = []
    for k in range(volume.shape[0]):
        slice_meta = dataclasses.replace(
            meta, instance_key=f"{meta.instance_key}:slice{k + 1}", instance_number=k + 1
        )
        ds = _dbt_dataset(volume[k : k + 1], slice_meta, first_slice=k, window=window)
        ds.ImagePositionPatient = _slice_position(k, meta)
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        paths.append(_save(ds, Path(folder) / f"slice_{k + 1:04d}.dcm"))
    return paths


def _slice_position(index: int, meta: DicomMeta) -> list[float]:
    return [0.0, 0.0, round((index + 0.5) * float(meta.slice_spacing_mm), 4)]


def _dbt_dataset(
    volume: np.ndarray,
    meta: DicomMeta,
    first_slice: int = 0,
    window: tuple[float, float] | None = None,
) -> Dataset:
    """A Breast Tomosynthesis dataset of `volume`, whose first frame is slice `first_slice`."""
    if volume.ndim != 3 or not meta.slice_spacing_mm:
        raise ValueError("DBT needs a 3-D volume [slices, rows, cols] and slice_spacing_mm")
    ds = _base_dataset(meta, DBT_SOP_CLASS, volume, window)
    n_frames = volume.shape[0]
    step = round(float(meta.slice_spacing_mm), 6)
    ds.ImageType = ["DERIVED", "PRIMARY", "TOMOSYNTHESIS", "NONE"]
    ds.NumberOfFrames = n_frames
    ds.SpacingBetweenSlices = step
    ds.SliceThickness = step
    ds.ContentQualification = "RESEARCH"
    ds.AcquisitionDateTime = meta.study_date + "120000"
    ds.DimensionOrganizationType = "3D"
    dimension = Dataset()
    dimension.DimensionIndexPointer = 0x00209057  # In-Stack Position Number
    dimension.FunctionalGroupPointer = 0x00209111  # Frame Content Sequence
    ds.DimensionIndexSequence = Sequence([dimension])

    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = ds.PixelSpacing
    measures.SliceThickness = step
    measures.SpacingBetweenSlices = step
    shared.PixelMeasuresSequence = Sequence([measures])
    orientation = Dataset()
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared.PlaneOrientationSequence = Sequence([orientation])
    voi = Dataset()
    voi.WindowCenter, voi.WindowWidth = ds.WindowCenter, ds.WindowWidth
    voi.VOILUTFunction = "LINEAR"
    shared.FrameVOILUTSequence = Sequence([voi])
    transform = Dataset()
    transform.RescaleIntercept, transform.RescaleSlope, transform.RescaleType = 0, 1, "US"
    shared.PixelValueTransformationSequence = Sequence([transform])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])

    frames = []
    for k in range(n_frames):
        frame = Dataset()
        content = Dataset()
        content.StackID = "1"
        content.InStackPositionNumber = first_slice + k + 1
        content.DimensionIndexValues = [first_slice + k + 1]
        frame.FrameContentSequence = Sequence([content])
        position = Dataset()
        position.ImagePositionPatient = _slice_position(first_slice + k, meta)
        frame.PlanePositionSequence = Sequence([position])
        frames.append(frame)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    return ds
