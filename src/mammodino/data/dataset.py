"""The pretraining data set of `data.source` and its sampler.

A prepared cache (`mammodino prepare` OUT) or a plain folder of images gives a `PretrainDataset`
(data/image_dataset.py); a cache with `data.dbt_fraction` > 0 gives the mixed FFDM + DBT set
(data/dbt_dataset.py), whose sampler fixes the DBT share of each batch; with `dbt.patient_pairs`
an FFDM-only cache's samples carry a crop of another image of their patient
(data/patient_pairs.py). Shard sources are streamed instead (data/shard_pretrain.py).
"""

from __future__ import annotations

from pathlib import Path

import torch.utils.data

from mammodino.config import Config
from mammodino.data.dbt_dataset import MixedPretrainDataset, build_mixed_dataset
from mammodino.data.dbt_pairs import pair_transform
from mammodino.data.image_dataset import ImageRecord, PretrainDataset
from mammodino.data.patient_pairs import PartnerCrops, patient_groups
from mammodino.data.resumable_sampler import ResumableSampler
from mammodino.data.transform import PretrainTransform
from mammodino.errors import ConfigError
from mammodino.preprocess.cache import is_prepared_cache, read_manifest
from mammodino.settings import Settings, as_settings

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".pgm", ".jpg", ".jpeg", ".npy", ".dcm")


def list_image_folder(folder: Path) -> list[ImageRecord]:
    """Every image file under a folder (sorted; masks are computed when the image is read)."""
    files = sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )
    return [ImageRecord(str(p.relative_to(folder).with_suffix("")), p, None) for p in files]


def build_pretrain_dataset(
    cfg: Settings | Config, source: str | Path | None = None
) -> torch.utils.data.Dataset:
    """The pretraining data set of `data.source` (a prepared cache or a folder of images).

    With `data.dbt_fraction` > 0 a prepared cache gives the mixed FFDM + DBT data set
    (data/dbt_dataset.py); at 0 every cached DBT slice is an image like any other.
    """
    settings = as_settings(cfg)
    source = source if source is not None else settings.data.source
    if source is None:
        raise ConfigError("data.source is not set: give a prepared cache or a folder of images")
    folder = Path(source)
    transform = PretrainTransform.from_settings(settings)
    pairs = settings.dbt.uses_patient_pairs
    partners = None
    if folder.is_dir() and is_prepared_cache(folder):
        if settings.data.dbt_fraction > 0:
            if pairs:
                raise ConfigError(
                    "dbt.patient_pairs is for FFDM-only runs; with data.dbt_fraction > 0 the "
                    "DBT slice pairs feed the cross-slice loss: set dbt.patient_pairs=false"
                )
            return build_mixed_dataset(settings, folder)
        rows = read_manifest(folder)
        records = [ImageRecord.from_row(folder, row) for row in rows]
        if pairs:
            groups, partner_rows = patient_groups(rows)
            partners = PartnerCrops(
                pair_transform(transform, settings.dbt.pair_size),
                groups,
                partner_rows,
                settings.train.seed,
            )
    elif folder.is_dir():
        if pairs:
            raise ConfigError(
                "dbt.patient_pairs needs a prepared cache (its manifest names each image's "
                "patient): run `mammodino prepare` or set dbt.patient_pairs=false"
            )
        records = list_image_folder(folder)
    else:
        raise ConfigError(f"data.source {str(folder)!r} is neither a prepared cache nor a folder")
    return PretrainDataset(
        records,
        transform,
        seed=settings.train.seed,
        cache_mb=settings.data.cache_mb,
        partners=partners,
    )


def build_sampler(
    dataset: torch.utils.data.Dataset,
    seed: int,
    start_index: int = 0,
    rank: int = 0,
    world_size: int = 1,
    batch_size: int = 1,
) -> torch.utils.data.Sampler[int]:
    """The sampler a data set needs: `MixedSampler` for a mixed FFDM + DBT set, else Resumable."""
    if isinstance(dataset, MixedPretrainDataset):
        return dataset.mixed_sampler(batch_size, seed, start_index, rank, world_size)
    return ResumableSampler(len(dataset), seed, start_index, rank, world_size)
