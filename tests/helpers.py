"""Plain helpers shared by the tests, and by the benchmarks that are their longer versions.

Synthetic images, DICOMs and prepared caches on disk, tiny configs, and the loader of a benchmark
script. Fixtures live in conftest.py. mammodino, torch and pytest are imported inside the functions
that need them, so a benchmark script can import this module cheaply.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

Breast = tuple[np.ndarray, np.ndarray]  # uint16 image, 0/255 uint8 mask


def shared_data_dir(*parts: str) -> Path:
    """A folder under ../shared/data, or skip the test with the reason."""
    import pytest

    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available at {path} (see ../shared/data/README.md)")
    return path


# ---------------------------------------------------------------- tiny configs


def settings_of(*overrides: str):
    """The typed settings of the defaults plus `key=value` overrides."""
    from mammodino.config import load_config
    from mammodino.settings import Settings

    return Settings.from_config(load_config(overrides=list(overrides)))


# The smallest MammoDINO that trains (ViT-Tiny/8 on 32/16 px crops, 64 prototypes, in-process
# data loading); each training test adds its schedule and the settings it is about.
TINY_TRAIN = [
    "model.arch=vit_tiny",
    "model.patch_size=8",
    "model.num_register_tokens=1",
    "crops.global_size=32",
    "crops.local_size=16",
    "crops.n_local=2",
    "masking.min_tissue_patches=2",
    "heads.dino_out_dim=64",
    "heads.ibot_out_dim=64",
    "heads.dino_hidden_dim=32",
    "heads.dino_bottleneck_dim=16",
    "data.num_workers=0",
    "train.log_every=1",
    "train.precision=fp32",  # the same numbers on every CPU (auto is bf16 where it is native)
]

# The schedule of the short training tests: 4 epochs of 3 steps, one of warm-up.
TINY_SCHEDULE = [
    "optim.epochs=4",
    "optim.steps_per_epoch=3",
    "optim.warmup_epochs=1",
    "optim.base_lr=0.05",
    "teacher.warmup_temp_epochs=1",
    "train.checkpoint_every=100",
]

# The training-loop tests' run: 4 epochs of 3 steps on write_cache's 8 images, deterministic.
TINY_LOOP = [
    *TINY_TRAIN,
    "model.drop_path_rate=0.1",
    "masking.probability=1.0",
    "data.batch_size=3",
    *TINY_SCHEDULE,
    "train.deterministic=true",
]

# The tiny run of the CLI tests and benchmarks/kill_resume.py as a YAML preset (write_preset).
TINY_PRESET = {
    "model": {"arch": "vit_tiny", "patch_size": 8, "num_register_tokens": 1, "drop_path_rate": 0.1},
    "crops": {"global_size": 32, "local_size": 16, "n_local": 2},
    "masking": {"probability": 1.0, "min_tissue_patches": 2},
    "heads": {"dino_out_dim": 64, "ibot_out_dim": 64, "dino_hidden_dim": 32,
              "dino_bottleneck_dim": 16},
    "data": {"batch_size": 3, "num_workers": 0},
    "optim": {"epochs": 10, "steps_per_epoch": 3, "warmup_epochs": 1, "base_lr": 0.05},
    "teacher": {"warmup_temp_epochs": 1},
    "train": {"log_every": 1, "checkpoint_every": 1, "deterministic": True, "precision": "fp32",
              "device": "cpu", "malloc_tunables": False, "keep_checkpoints": 2},
}  # fmt: skip


def write_preset(path: Path, cache: Path, steps: int) -> Path:
    """TINY_PRESET as a YAML file, with data.source and optim.max_steps filled in."""
    import yaml

    preset = {k: dict(v) for k, v in TINY_PRESET.items()}
    preset["data"]["source"] = str(cache)
    preset["optim"]["max_steps"] = steps
    path.write_text(yaml.safe_dump(preset, sort_keys=False))
    return path


def subprocess_env() -> dict[str, str]:
    """One thread per process (fair on a shared machine; deterministic kernels anyway)."""
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")


# ---------------------------------------------------------------- synthetic caches


def disc_breast(
    height: int, width: int = 40, *, level: int, noise: int = 8000, seed: int
) -> Breast:
    """A half-disc breast against the left edge: `level` plus uniform noise inside, 300 outside."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:height, :width]
    mask = ((rows - height / 2) ** 2 + cols**2) < (0.45 * height) ** 2
    image = np.where(mask, level + rng.integers(0, noise, (height, width)), 300)
    return image.astype(np.uint16), (mask * 255).astype(np.uint8)


def density_breast(i: int, height: int | None = None) -> Breast:
    """Image i of two "density" classes the kNN monitor can tell apart (odd i darker).

    Heights cycle through 48, 52 and 56 px unless `height` is given.
    """
    height = 48 + 4 * (i % 3) if height is None else height
    return disc_breast(height, level=15000 if i % 2 else 40000, seed=i)


def _mias_columns(i: int, image: np.ndarray) -> dict[str, object]:
    return {"source": f"mdb{i + 1:03d}.png"}


def _mias_tissue(i: int) -> dict[str, object]:
    return {"file": f"mdb{i + 1:03d}.png", "tissue_FGD": "FD"[i % 2]}


def prepared_columns(i: int, image: np.ndarray) -> dict[str, object]:
    """Manifest columns that prepare writes besides id/image/mask (two images a patient)."""
    height, width = image.shape
    return {"source": f"im{i}.png", "patient_id": f"p{i // 2}", "laterality": "L", "view": "CC",
            "height": height, "width": width}  # fmt: skip


def write_csv(
    path: Path, rows: list[dict], fieldnames: list[str] | None = None, lineterminator: str = "\r\n"
) -> Path:
    """A CSV of `rows` (columns: `fieldnames`, else the first row's keys)."""
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(
            handle, fieldnames=fieldnames or list(rows[0]), lineterminator=lineterminator
        )
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_cache(
    folder: Path,
    count: int = 8,
    *,
    breast: Callable[[int], Breast] = density_breast,
    columns: Callable[[int, np.ndarray], dict[str, object]] | None = _mias_columns,
    labels: Callable[[int], dict[str, object]] | None = _mias_tissue,
) -> Path:
    """A prepared cache as `mammodino prepare` writes it: uint16 images, 0/255 masks,
    manifest.csv, and labels.csv unless `labels` is None.

    breast(i) draws image i; columns(i, image) adds its manifest columns (a `source` goes after
    `id`, where prepare puts it); labels(i) is its labels.csv row. The defaults: density_breast
    images named like mini-MIAS files, labelled with their tissue class (F/D).
    """
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(exist_ok=True)
    rows = []
    for i in range(count):
        image, mask = breast(i)
        cv2.imwrite(str(folder / "images" / f"im{i}.png"), image)
        cv2.imwrite(str(folder / "masks" / f"im{i}.png"), mask)
        extra = dict(columns(i, image)) if columns else {}
        source = {"source": extra.pop("source")} if "source" in extra else {}
        paths = {"image": f"images/im{i}.png", "mask": f"masks/im{i}.png"}
        rows.append({"id": f"id{i}", **source, **paths, **extra})
    write_csv(folder / "manifest.csv", rows)
    if labels:
        write_csv(folder / "labels.csv", [labels(i) for i in range(count)], lineterminator="\n")
    return folder


# Slice profile of write_mixed_cache's volumes: haze, tissue (slices 2..8), haze.
CONTRAST = [0.05, 0.1, 0.6, 0.8, 1.0, 1.0, 0.9, 0.8, 0.6, 0.1, 0.05]
SPACING_MM = 0.5
MIXED_COLUMNS = [
    "id", "image", "mask", "volume_id", "slice_index", "slice_count", "slice_spacing_mm"
]  # fmt: skip


def texture_breast(height: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Texture in a half disc against the left edge (float 0..1) and its 0/255 mask."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:height, :width]
    mask = ((rows - height / 2) ** 2 + cols**2) < (0.45 * height) ** 2
    texture = cv2.GaussianBlur(rng.random((height, width)).astype(np.float32), (0, 0), 2)
    return np.where(mask, texture, 0.0), (mask * 255).astype(np.uint8)


def write_mixed_cache(folder: Path, n_ffdm: int = 3, n_volumes: int = 2) -> Path:
    """A cache like prepare writes: FFDM rows plus DBT volumes stored slice-wise, one mask each."""
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    rows = []
    for i in range(n_ffdm):
        texture, mask = texture_breast(64, 48, seed=i)
        cv2.imwrite(str(folder / f"images/f{i}.png"), (10000 + 40000 * texture).astype(np.uint16))
        cv2.imwrite(str(folder / f"masks/f{i}.png"), mask)
        rows.append({"id": f"f{i}", "image": f"images/f{i}.png", "mask": f"masks/f{i}.png"})
    for v in range(n_volumes):
        texture, mask = texture_breast(64, 48, seed=100 + v)
        cv2.imwrite(str(folder / f"masks/v{v}.png"), mask)
        for z, level in enumerate(CONTRAST):
            # Every slice is the same texture plus a constant: aligned crops differ by a constant.
            image = np.where(mask > 0, 2000 + 50000 * level + 8000 * texture, 1000)
            name = f"images/v{v}-{z:03d}.png"
            cv2.imwrite(str(folder / name), image.astype(np.uint16))
            rows.append(
                {
                    "id": f"v{v}-{z:03d}",
                    "image": name,
                    "mask": f"masks/v{v}.png",
                    "volume_id": f"v{v}",
                    "slice_index": z,
                    "slice_count": len(CONTRAST),
                    "slice_spacing_mm": SPACING_MM,
                }
            )
    write_csv(folder / "manifest.csv", rows, MIXED_COLUMNS)
    return folder


def write_sources(folder: Path, count: int = 200) -> Path:
    """Small synthetic mammogram-like PNGs (breast half-disc on the left) for prepare."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        rng = np.random.default_rng(100 + i)
        h, w = 160, 120
        r, c = np.mgrid[:h, :w]
        mask = ((r - h / 2) ** 2 + (c * 1.3) ** 2) < (0.42 * h) ** 2
        image = np.where(mask, 20000 + rng.integers(0, 20000, (h, w)), 200).astype(np.uint16)
        cv2.imwrite(str(folder / f"case{i:02d}.png"), image)
    return folder


# ---------------------------------------------------------------- synthetic DICOMs

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


# ---------------------------------------------------------------- models and runs


# A ViT-Tiny of patch 8 with small DINO and slice heads: the model of the slice-loss tests.
TINY_SLICE_MODEL = [
    "model.arch=vit_tiny",
    "model.patch_size=8",
    "model.num_register_tokens=0",
    "heads.dino_out_dim=32",
    "heads.ibot_out_dim=32",
    "heads.dino_hidden_dim=16",
    "heads.dino_bottleneck_dim=8",
    "dbt.proj_dim=16",
    "dbt.proj_hidden_dim=32",
]


def tiny_vit(**kwargs):
    """A seeded 2-block ViT (56 px, patch 14, width 48) with non-trivial tokens and layer scales."""
    import torch

    from mammodino.models.vit import build_vit

    torch.manual_seed(1)
    params = {"img_size": 56, "patch_size": 14, "depth": 2, "embed_dim": 48, "num_heads": 3}
    params.update(kwargs)
    model = build_vit("vit_tiny", **params).eval()
    with torch.no_grad():
        model.register_tokens is not None and model.register_tokens.normal_()
        model.cls_token.normal_()
        for block in model.blocks:
            block.ls1.gamma.normal_(0, 0.5)
            block.ls2.gamma.normal_(0, 0.5)
    return model


def fake_run(tmp_path: Path):
    """A run folder with one checkpoint in the training loop's format (student/teacher/arch)."""
    import torch

    from mammodino.models.heads import DINOHead, ProjectionHead
    from mammodino.train.checkpoint import CheckpointManager

    backbone = tiny_vit(num_register_tokens=4)
    parts = torch.nn.ModuleDict(
        {
            "backbone": backbone,
            "dino_head": DINOHead(48, 32, 16, 8),
            "slice_head": ProjectionHead(48, 8, 16),
        }
    )
    payload = {
        "step": 5,
        "student": parts.state_dict(),
        "teacher": parts.state_dict(),
        "arch": backbone.arch_dict(),
        "config": "",
    }
    CheckpointManager(tmp_path / "run" / "checkpoints").save(payload)
    return tmp_path / "run", parts


def free_port() -> int:
    """A TCP port free on 127.0.0.1 just now (for a torch.distributed rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- benchmarks


def load_benchmark(name: str) -> ModuleType:
    """benchmarks/<name>.py, freshly executed, for the tests that are its short CI version.

    benchmarks/ is a folder of scripts, not a package, so it is loaded by path. The module is
    registered in sys.modules first: dataclasses (and pickle) look their module up there.
    """
    module_name = f"benchmark_{name}"
    spec = importlib.util.spec_from_file_location(
        module_name, REPO_ROOT / "benchmarks" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module
