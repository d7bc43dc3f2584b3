import pytest
import yaml

from mammodino.config import load_config, parse_override
from mammodino.errors import ConfigError

DEFAULTS = {"optim": {"lr": 0.004, "epochs": 10}, "crops": {"sampler": "tissue", "tau": 0.5}}


def test_override_types_and_nesting():
    cfg = load_config(DEFAULTS, overrides=["optim.lr=1e-3", "crops.sampler=random"])
    assert cfg.optim.lr == pytest.approx(1e-3)
    assert cfg.crops.sampler == "random"
    assert cfg.optim.epochs == 10
    assert DEFAULTS["optim"]["lr"] == 0.004  # defaults untouched


def test_unknown_override_lists_valid_keys():
    with pytest.raises(ConfigError) as err:
        load_config(DEFAULTS, overrides=["optim.learning_rate=1"])
    assert "optim.learning_rate" in str(err.value)
    assert "['epochs', 'lr']" in str(err.value)


def test_unknown_preset_key_fails(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text(yaml.safe_dump({"crops": {"tua": 0.3}}))
    with pytest.raises(ConfigError, match=r"crops\.tua.*\['sampler', 'tau'\]"):
        load_config(DEFAULTS, preset=preset)


def test_preset_then_override_order_and_save(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text(yaml.safe_dump({"crops": {"tau": 0.3}, "optim": {"epochs": 2}}))
    cfg = load_config(DEFAULTS, preset=preset, overrides=["optim.epochs=3"])
    assert (cfg.crops.tau, cfg.optim.epochs) == (0.3, 3)
    cfg.save(tmp_path / "resolved.yaml")
    assert yaml.safe_load((tmp_path / "resolved.yaml").read_text())["optim"]["epochs"] == 3


def test_section_cannot_be_replaced_by_scalar():
    with pytest.raises(ConfigError, match="is a section"):
        load_config(DEFAULTS, overrides=["optim=3"])


def test_parse_override_requires_equals():
    with pytest.raises(ConfigError):
        parse_override("optim.lr")
    assert parse_override("a.b=[1, 2]") == {"a": {"b": [1, 2]}}
