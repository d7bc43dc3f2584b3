"""Typed, frozen settings: every section of the resolved config parsed once.

`Settings.from_config(cfg)` turns the config of config.py (defaults, preset, overrides, with the
hardware defaults of train/hardware.py resolved) into one frozen dataclass per YAML section, each
value cast to its field's type and the choices of crops, masking and augment checked. Code below
the entry points takes these objects, or plain values from them, never the config dict.

Defaults live in one place, configs/default.yaml: no field has a default of its own, and
tests/test_settings.py checks that the keys of every section and the fields of its class agree.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

from mammodino.errors import ConfigError

CROP_SAMPLERS = ("tissue", "random")
INTENSITY_MODES = ("dataset", "image", "none")
MASKING_MODES = ("tissue", "random")

_S = TypeVar("_S", bound="Section")


class Section:
    """Base of a section's settings: `parse` casts a config mapping to the field types."""

    @classmethod
    def parse(cls: type[_S], name: str, section: Any) -> _S:
        """The settings of config section `name` (its mapping of key -> value)."""
        if not isinstance(section, Mapping):
            raise ConfigError(f"config section {name!r} must be a mapping, got {section!r}")
        hints = get_type_hints(cls)
        fields = [f.name for f in dataclasses.fields(cls)]
        missing = [k for k in fields if k not in section]
        unknown = sorted(set(section) - set(fields))
        if missing or unknown:
            raise ConfigError(
                f"config section {name!r}: missing keys {missing}, unknown keys {unknown}"
            )
        return cls(**{k: _cast(f"{name}.{k}", hints[k], section[k]) for k in fields})


def _cast(dotted: str, kind: Any, value: Any) -> Any:
    """`value` as type `kind` (int, float, bool, str, `X | None`, tuple of floats)."""
    if get_origin(kind) in (Union, types.UnionType):
        if value is None:
            return None
        (kind,) = [a for a in get_args(kind) if a is not type(None)]
    if get_origin(kind) is tuple:
        sizes = get_args(kind)
        fixed = sizes[-1] is not Ellipsis
        if not isinstance(value, list | tuple) or (fixed and len(value) != len(sizes)):
            count = f"{len(sizes)} numbers" if fixed else "a list of numbers"
            raise ConfigError(f"config key {dotted!r} takes {count}, got {value!r}")
        return tuple(_cast(dotted, float, v) for v in value)
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key {dotted!r} takes true or false, got {value!r}")
        return value
    if value is None or (isinstance(value, bool) and kind is not str):
        raise ConfigError(f"config key {dotted!r} takes {kind.__name__}, got {value!r}")
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"config key {dotted!r} takes {kind.__name__}, got {value!r}") from None


@dataclass(frozen=True)
class DataSettings(Section):
    """`data`: the pretraining source and its loading."""

    source: str | None
    num_workers: int
    batch_size: int
    dbt_fraction: float
    salt: str | None
    cache_mb: int
    shuffle_buffer: int
    mix_shards: int


@dataclass(frozen=True)
class PrepareSettings(Section):
    """`prepare`: the prepared cache (docs/prepare.md)."""

    cache_size: int
    crop: bool
    margin: float
    mask_size: int
    pectoral: bool
    voi: str
    intensity: str
    workers: int

    def __post_init__(self) -> None:
        if self.intensity not in INTENSITY_MODES:
            raise ConfigError(
                f"prepare.intensity must be one of {INTENSITY_MODES}, got {self.intensity!r}"
            )


@dataclass(frozen=True)
class ModelSettings(Section):
    """`model`: the ViT backbone."""

    arch: str
    patch_size: int
    in_chans: int
    num_register_tokens: int
    layerscale_init: float
    drop_path_rate: float
    init: str | None
    init_warmup_steps: int


@dataclass(frozen=True)
class HeadsSettings(Section):
    """`heads`: the DINO (and separate iBOT) heads."""

    dino_out_dim: int
    dino_hidden_dim: int
    dino_bottleneck_dim: int
    dino_nlayers: int
    dino_batch_norm: bool
    ibot_separate_head: bool
    ibot_out_dim: int


@dataclass(frozen=True)
class CropSettings(Section):
    """`crops`: the multi-crop recipe (data/transform.py)."""

    sampler: str
    global_size: int
    local_size: int
    n_global: int
    n_local: int
    global_scale: tuple[float, float]
    local_scale: tuple[float, float]
    ratio: tuple[float, float]
    global_min_tissue: float
    local_min_tissue: float
    max_tries: int
    dense_weight: float

    def __post_init__(self) -> None:
        if self.sampler not in CROP_SAMPLERS:
            raise ConfigError(f"crops.sampler must be one of {CROP_SAMPLERS}, got {self.sampler!r}")
        if self.n_global < 1 or self.n_local < 0:
            raise ConfigError(
                f"crops.n_global must be >= 1 and crops.n_local >= 0, got {self.n_global}, "
                f"{self.n_local}"
            )


@dataclass(frozen=True)
class MaskingSettings(Section):
    """`masking`: the iBOT masks (data/tissue_masking.py)."""

    mode: str
    probability: float
    ratio: tuple[float, float]
    patch_tissue_threshold: float
    min_tissue_patches: int
    block_min_patches: int
    block_aspect: tuple[float, float]
    dense_weight: float

    def __post_init__(self) -> None:
        if self.mode not in MASKING_MODES:
            raise ConfigError(f"masking.mode must be one of {MASKING_MODES}, got {self.mode!r}")
        if not 0.0 <= self.probability <= 1.0:
            raise ConfigError(f"masking.probability must lie in [0, 1], got {self.probability}")
        if self.dense_weight < 0:
            raise ConfigError(f"masking.dense_weight must be >= 0, got {self.dense_weight}")


@dataclass(frozen=True)
class AugmentSettings(Section):
    """`augment`: the intensity augmentations (data/augment.py)."""

    brightness_p: float
    brightness: float
    contrast_p: float
    contrast: float
    gamma_p: float
    gamma: tuple[float, float]
    window_p: float
    window_jitter: float
    blur_p_global: tuple[float, ...]
    blur_p_local: float
    blur_sigma: tuple[float, float]
    noise_p: float
    noise_std: float
    solarize_p: float
    vflip_p: float

    def __post_init__(self) -> None:
        names = [f.name for f in dataclasses.fields(self) if f.name.endswith("_p")]
        probabilities = [getattr(self, k) for k in names] + [self.blur_p_local, *self.blur_p_global]
        if any(not 0.0 <= p <= 1.0 for p in probabilities):
            raise ConfigError(f"augment probabilities must lie in [0, 1], got {probabilities}")
        if not self.blur_p_global:
            raise ConfigError("augment.blur_p_global needs one value per global crop (or one)")

    def blur_p(self, kind: str, crop_index: int) -> float:
        """Blur probability of a crop: per global crop index (last value repeats), or local."""
        if kind == "local":
            return self.blur_p_local
        return self.blur_p_global[min(crop_index, len(self.blur_p_global) - 1)]


@dataclass(frozen=True)
class DinoSettings(Section):
    """`dino`: the DINO loss, its centering and KoLeo."""

    loss_weight: float
    student_temp: float
    centering: str
    center_momentum: float
    sinkhorn_iterations: int
    koleo_loss_weight: float


@dataclass(frozen=True)
class IbotSettings(Section):
    """`ibot`: the masked-token loss."""

    loss_weight: float


@dataclass(frozen=True)
class TeacherSettings(Section):
    """`teacher`: EMA momentum and temperature schedules."""

    momentum: float
    final_momentum: float
    temp: float
    warmup_temp: float
    warmup_temp_epochs: float


@dataclass(frozen=True)
class OptimSettings(Section):
    """`optim`: AdamW, its groups and schedules, and when to stop."""

    epochs: int
    steps_per_epoch: int
    max_steps: int | None
    max_minutes: float | None
    base_lr: float
    warmup_epochs: float
    min_lr: float
    weight_decay: float
    weight_decay_end: float
    clip_grad: float
    freeze_last_layer_epochs: float
    patch_embed_lr_mult: float
    layerwise_decay: float
    betas: tuple[float, float]
    accumulate_steps: int


@dataclass(frozen=True)
class DbtSettings(Section):
    """`dbt`: slice pairs of tomosynthesis volumes and the cross-slice loss."""

    slice_loss_weight: float
    temperature: float
    d_max_mm: float
    proj_dim: int
    proj_hidden_dim: int
    negative_gap_mm: float | None
    patch_level: bool
    pair_size: int | None
    tissue_threshold: float
    patient_pairs: bool

    @property
    def uses_patient_pairs(self) -> bool:
        """Whether samples carry patient-pair crops: `patient_pairs` with the slice loss on."""
        return self.patient_pairs and self.slice_loss_weight > 0


@dataclass(frozen=True)
class HealthSettings(Section):
    """`health`: plateau / collapse warnings (train/health.py)."""

    plateau_tolerance: float
    min_effective_rank: float
    patience: int


@dataclass(frozen=True)
class TrainSettings(Section):
    """`train`: seed, precision, device, logging and checkpoints."""

    seed: int
    precision: str
    log_every: int
    checkpoint_every: int
    keep_checkpoints: int
    deterministic: bool
    max_nonfinite_steps: int
    device: str
    malloc_tunables: bool
    compile: bool


@dataclass(frozen=True)
class MonitorSettings(Section):
    """`monitor`: the k-NN probe of the teacher (train/monitor.py)."""

    every: int
    source: str | None
    labels: str | None
    label_column: str | None
    labels_key: str
    manifest_key: str
    image_size: int | None
    k: int


@dataclass(frozen=True)
class DistributedSettings(Section):
    """`distributed`: DDP / FSDP2 under torchrun."""

    strategy: str
    activation_checkpointing: bool
    koleo: str


@dataclass(frozen=True)
class Settings:
    """Every section of a resolved config, typed."""

    data: DataSettings
    prepare: PrepareSettings
    model: ModelSettings
    heads: HeadsSettings
    crops: CropSettings
    masking: MaskingSettings
    augment: AugmentSettings
    dino: DinoSettings
    ibot: IbotSettings
    teacher: TeacherSettings
    optim: OptimSettings
    dbt: DbtSettings
    health: HealthSettings
    train: TrainSettings
    monitor: MonitorSettings
    distributed: DistributedSettings

    def __post_init__(self) -> None:
        if self.crops.global_size < self.model.patch_size:
            raise ConfigError(
                f"crops.global_size {self.crops.global_size} is smaller than the patch size "
                f"{self.model.patch_size}"
            )

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> Settings:
        """Parse the resolved config (a `Config` or nested plain dicts) into typed sections."""
        hints = get_type_hints(cls)
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(cfg) - set(names))
        if unknown:
            raise ConfigError(f"unknown config sections {unknown}; valid: {names}")
        missing = [name for name in names if name not in cfg]
        if missing:
            raise ConfigError(f"config lacks sections {missing}")
        return cls(**{name: hints[name].parse(name, cfg[name]) for name in names})


def as_settings(cfg: Settings | Mapping[str, Any]) -> Settings:
    """Settings as they are, a config parsed: for entry points that take either."""
    return cfg if isinstance(cfg, Settings) else Settings.from_config(cfg)
