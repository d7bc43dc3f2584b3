"""Patient pairs of 2-D images for the cross-slice loss (`dbt.patient_pairs`, docs/pretrain.md).

A screening exam holds several images of one woman (left and right breast, CC and MLO views):
they share what is hers, above all her breast density, as neighbouring DBT slices share their
anatomy. With `dbt.patient_pairs` each FFDM sample of a prepared cache whose patient has another
image gets one crop of such a partner image, drawn with the pair transform of the slice loss
(data/dbt_pairs.py: one tissue-aware global box at `dbt.pair_size`, no iBOT mask):

    "partner_crop": float32 [1, S, S]   # a crop of another image of the same patient
    "partner_group": int                 # the patient's group index (negatives: other groups)

The partner and its crop come from their own seed, (train.seed, epoch, index, PAIR_SEED_TAG), so
the sample's own crops and masks are the same draws with pairs on or off.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from mammodino.data.tissue_crops import TissueMap
from mammodino.data.transform import PretrainTransform, sample_rngs
from mammodino.errors import ConfigError

PAIR_SEED_TAG = 0x9A1

Loader = Callable[[int], tuple[np.ndarray, float, TissueMap]]


def patient_groups(rows: Sequence[Mapping[str, str]]) -> tuple[list[int], list[tuple[int, ...]]]:
    """Group index of each manifest row (one per patient id) and each row's partner rows.

    A row without a patient id is its own group, with no partner.
    """
    by_patient: dict[str, int] = {}
    groups = []
    for row in rows:
        patient = (row.get("patient_id") or "").strip()
        if not patient:
            groups.append(-1 - len(groups))  # unique and never equal to a patient's group
            continue
        groups.append(by_patient.setdefault(patient, len(by_patient)))
    members: dict[int, list[int]] = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    partners = [tuple(i for i in members[g] if i != index) for index, g in enumerate(groups)]
    return groups, partners


class PartnerCrops:
    """Adds a crop of a same-patient partner image to the samples that have one."""

    def __init__(
        self,
        pair: PretrainTransform,
        groups: Sequence[int],
        partners: Sequence[tuple[int, ...]],
        seed: int,
    ) -> None:
        if len(groups) != len(partners):
            raise ValueError(f"{len(groups)} groups for {len(partners)} partner lists")
        if not any(partners):
            raise ConfigError(
                "dbt.patient_pairs: no two images of the source share a patient id "
                "(manifest column patient_id); set dbt.patient_pairs=false"
            )
        self.pair = pair
        self.groups = list(groups)
        self.partners = list(partners)
        self.seed = int(seed)

    def add(self, sample: dict[str, Any], index: int, epoch: int, load: Loader) -> dict[str, Any]:
        """`sample` with `partner_crop` and `partner_group` when image `index` has a partner."""
        candidates = self.partners[index]
        if not candidates:
            return sample
        seed = (self.seed, epoch, index, PAIR_SEED_TAG)
        choice_rng, crop_rng, aug_rng, mask_rng = sample_rngs(seed, 4)
        partner = candidates[int(choice_rng.integers(len(candidates)))]
        pixels, intensity_max, tissue = load(partner)
        plan = self.pair.plan(crop_rng, tissue)
        crop = self.pair.render(pixels, tissue, plan, aug_rng, mask_rng, intensity_max, partner)
        sample["partner_crop"] = crop["global_crops"][0]
        sample["partner_group"] = self.groups[index]
        return sample
