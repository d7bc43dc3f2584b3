"""Configuration: YAML defaults, a preset merged over them, then `key=value` overrides.

Every key of a preset or override must exist in the defaults; an unknown key fails at start with
the list of valid keys at that level. The resolved config is written next to each run's outputs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from mammodino.errors import ConfigError

DEFAULTS_NAME = "default.yaml"


class Config(dict):
    """A nested dict with attribute access (`cfg.optim.lr`)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no key {name!r}; valid: {sorted(self)}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def to_dict(self) -> dict:
        """Plain nested dicts, for YAML and JSON."""
        return {k: v.to_dict() if isinstance(v, Config) else v for k, v in self.items()}

    def save(self, path: str | Path) -> None:
        """Write the resolved config as YAML."""
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def _wrap(value: Any) -> Any:
    if isinstance(value, Mapping):
        return Config({k: _wrap(v) for k, v in value.items()})
    return value


def preset_path(name_or_path: str | Path) -> Path:
    """Resolve a preset given as a file path or as a bundled name (`tiny-cpu`)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    bundled = resources.files("mammodino") / "configs" / f"{path.stem}.yaml"
    if bundled.is_file():
        return Path(str(bundled))
    available = sorted(
        p.name[:-5]
        for p in (resources.files("mammodino") / "configs").iterdir()
        if p.name.endswith(".yaml") and p.name != DEFAULTS_NAME
    )
    raise ConfigError(f"config {str(name_or_path)!r} not found; bundled presets: {available}")


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at top level, got {type(data).__name__}")
    return data


def merge_into(base: dict, update: Mapping, where: str = "") -> None:
    """Merge `update` into `base` in place; every key of `update` must already be in `base`."""
    for key, value in update.items():
        dotted = f"{where}.{key}" if where else str(key)
        if key not in base:
            raise ConfigError(f"unknown config key {dotted!r}; valid keys here: {sorted(base)}")
        if isinstance(base[key], dict):
            if not isinstance(value, Mapping):
                raise ConfigError(
                    f"config key {dotted!r} is a section; give one of its keys: {sorted(base[key])}"
                )
            merge_into(base[key], value, dotted)
        else:
            base[key] = value


def _parse_scalar(raw: str) -> Any:
    """YAML value, except that `1e-3` is a float (YAML 1.1 would read a string)."""
    if not raw.strip():
        return None
    value = yaml.safe_load(raw)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def parse_override(text: str) -> dict:
    """`a.b.c=value` -> {'a': {'b': {'c': value}}}, value parsed as YAML (1e-3, true, [1, 2])."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    dotted, raw = text.split("=", 1)
    value = _parse_scalar(raw)
    nested: dict = {}
    node = nested
    parts = dotted.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return nested


def load_config(
    defaults: str | Path | Mapping | None = None,
    preset: str | Path | None = None,
    overrides: Iterable[str] = (),
) -> Config:
    """Defaults (bundled `default.yaml` unless given), then a preset, then overrides."""
    if defaults is None:
        defaults = Path(str(resources.files("mammodino") / "configs" / DEFAULTS_NAME))
    base = dict(defaults) if isinstance(defaults, Mapping) else _read_yaml(Path(defaults))
    base = _wrap(base).to_dict()  # deep copy
    if preset is not None:
        merge_into(base, _read_yaml(preset_path(preset)))
    for text in overrides:
        merge_into(base, parse_override(text))
    return _wrap(base)
