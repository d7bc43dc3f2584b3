"""Configuration: YAML defaults, a preset merged over them, then `key=value` overrides.

Every key of a preset or override must exist in the defaults; an unknown key fails at start with
the list of valid keys at that level, and a value of the wrong type (`optim.max_steps=abc`) with
the type the key takes. The resolved config is written next to each run's outputs; code below the
entry points reads it through `mammodino.settings.Settings` (typed sections, parsed once).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any, NoReturn

import yaml

from mammodino.errors import ConfigError

DEFAULTS_NAME = "default.yaml"
# Keys whose default does not show the type they take: null defaults, and epoch counts written as
# whole numbers that may be fractional (the schedules multiply them by steps_per_epoch).
DECLARED_TYPES: dict[str, type] = {
    "data.source": str,
    "data.salt": str,
    "model.init": str,
    "optim.max_steps": int,
    "optim.max_minutes": float,
    "optim.warmup_epochs": float,
    "optim.freeze_last_layer_epochs": float,
    "teacher.warmup_temp_epochs": float,
    "dbt.negative_gap_mm": float,
    "dbt.pair_size": int,
    "monitor.source": str,
    "monitor.labels": str,
    "monitor.label_column": str,
    "monitor.image_size": int,
}
_TYPE_WORDS = {bool: "true or false", int: "a whole number", float: "a number", str: "text"}
_EXAMPLES = {bool: "true", int: "100", float: "0.5", str: "NAME"}


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


def preset_layers(name_or_path: str | Path, _chain: tuple[Path, ...] = ()) -> list[dict]:
    """A preset and the presets it `extends`, outermost base first: merged in this order, a
    preset states only what it changes (the demo is `tiny-cpu` with a shorter schedule)."""
    path = preset_path(name_or_path)
    if path.resolve() in _chain:
        names = " -> ".join(p.stem for p in (*_chain, path.resolve()))
        raise ConfigError(f"config presets extend each other in a loop: {names}")
    data = _read_yaml(path)
    parent = data.pop("extends", None)
    if parent is None:
        return [data]
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: 'extends' takes one preset name or YAML path")
    # A relative path names a file beside the extending preset; else a bundled name or a path.
    beside = path.parent / parent
    base = beside if beside.is_file() else parent
    return [*preset_layers(base, (*_chain, path.resolve())), data]


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
            base[key] = checked_value(dotted, base[key], value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def checked_value(dotted: str, default: Any, value: Any) -> Any:
    """`value` for key `dotted` if it has the type of the key's default (or DECLARED_TYPES entry).

    Whole-number floats become ints for integer keys and numbers become text for text keys;
    anything else of the wrong type raises ConfigError saying what the key takes.
    """
    kind = DECLARED_TYPES.get(dotted, type(default))
    if (value is None and default is None) or kind is type(None):
        return value  # null where the default is null; an undeclared null default takes anything
    if kind is list:
        numeric = all(_is_number(v) for v in default)
        if isinstance(value, list) and (not numeric or all(_is_number(v) for v in value)):
            return value
        takes = "a list of numbers" if numeric else "a list"
        _wrong_type(dotted, takes, value, "[" + ", ".join(map(str, default)) + "]")
    if kind is bool and isinstance(value, bool):
        return value
    if kind is int and _is_number(value) and float(value).is_integer():
        return int(value)
    if kind is float and _is_number(value):
        return value
    if kind is str and (isinstance(value, str) or _is_number(value)):
        return str(value)
    example = _EXAMPLES[kind] if default is None else default
    example = str(example).lower() if isinstance(example, bool) else example
    _wrong_type(dotted, _TYPE_WORDS[kind], value, example)


def _wrong_type(dotted: str, takes: str, value: Any, example: Any) -> NoReturn:
    got = "nothing" if value is None else repr(value)
    raise ConfigError(f"config key {dotted!r} takes {takes}, got {got}; e.g. {dotted}={example}")


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
        for layer in preset_layers(preset):
            merge_into(base, layer)
    for text in overrides:
        merge_into(base, parse_override(text))
    return _wrap(base)
