"""Typed settings: default.yaml and the section classes agree key for key; every preset parses."""

from __future__ import annotations

import dataclasses
import typing
from importlib import resources

import pytest
import yaml

from mammodino.config import DEFAULTS_NAME, load_config
from mammodino.errors import ConfigError
from mammodino.settings import Settings, as_settings

DEFAULTS = yaml.safe_load((resources.files("mammodino") / "configs" / DEFAULTS_NAME).read_text())
PRESETS = sorted(
    p.name[: -len(".yaml")]
    for p in (resources.files("mammodino") / "configs").iterdir()
    if p.name.endswith(".yaml") and p.name != DEFAULTS_NAME
)
SECTIONS = typing.get_type_hints(Settings)  # section name -> its settings class


def test_every_section_of_the_defaults_is_a_settings_class_and_back():
    assert list(DEFAULTS) == list(SECTIONS)


@pytest.mark.parametrize("section", sorted(DEFAULTS))
def test_every_key_is_a_field_and_every_field_a_key(section):
    fields = dataclasses.fields(SECTIONS[section])
    assert [f.name for f in fields] == list(DEFAULTS[section])
    # Defaults live in default.yaml only.
    assert all(f.default is dataclasses.MISSING for f in fields)
    assert all(f.default_factory is dataclasses.MISSING for f in fields)


def test_the_defaults_parse_with_their_types():
    settings = Settings.from_config(load_config())
    for section, values in DEFAULTS.items():
        parsed = getattr(settings, section)
        for key, value in values.items():
            got = getattr(parsed, key)
            expected = tuple(value) if isinstance(value, list) else value
            assert got == expected, f"{section}.{key}"
    # Cast once: epochs written as whole numbers are floats, lists are tuples.
    assert settings.teacher.warmup_temp_epochs == 30.0
    assert isinstance(settings.teacher.warmup_temp_epochs, float)
    assert settings.optim.betas == (0.9, 0.999)
    assert settings.data.source is None and settings.dbt.pair_size is None


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_parses(preset):
    settings = Settings.from_config(load_config(preset=preset))
    assert settings.crops.global_size >= settings.model.patch_size
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.optim.base_lr = 1.0  # type: ignore[misc]


def test_overrides_are_cast_and_checked():
    settings = Settings.from_config(
        load_config(overrides=["optim.max_steps=5", "dbt.negative_gap_mm=2", "crops.ratio=[1, 2]"])
    )
    assert settings.optim.max_steps == 5 and settings.dbt.negative_gap_mm == 2.0
    assert settings.crops.ratio == (1.0, 2.0)
    with pytest.raises(ConfigError, match="crops.ratio.*2 numbers"):
        Settings.from_config(load_config(overrides=["crops.ratio=[1, 2, 3]"]))
    with pytest.raises(ConfigError, match="crops.sampler"):
        Settings.from_config(load_config(overrides=["crops.sampler=everywhere"]))
    with pytest.raises(ConfigError, match="patch size"):
        Settings.from_config(load_config(overrides=["crops.global_size=8"]))


def test_a_config_missing_keys_or_sections_is_refused():
    plain = load_config().to_dict()
    del plain["optim"]["betas"]
    with pytest.raises(ConfigError, match=r"'optim'.*missing keys \['betas'\]"):
        Settings.from_config(plain)
    del plain["monitor"]
    with pytest.raises(ConfigError, match="lacks sections"):
        Settings.from_config(plain)


def test_as_settings_parses_a_config_and_passes_settings_through():
    settings = as_settings(load_config())
    assert as_settings(settings) is settings
