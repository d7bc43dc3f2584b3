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


def test_preset_extends_a_bundled_preset_and_a_file_beside_it(tmp_path):
    (tmp_path / "mine.yaml").write_text(
        yaml.safe_dump({"extends": "tiny-cpu", "optim": {"epochs": 7}})
    )
    (tmp_path / "short.yaml").write_text(
        yaml.safe_dump({"extends": "mine.yaml", "crops": {"dense_weight": 0.5}})
    )
    tiny = load_config(preset="tiny-cpu").to_dict()
    cfg = load_config(preset=tmp_path / "short.yaml", overrides=["optim.epochs=9"]).to_dict()
    assert (cfg["optim"]["epochs"], cfg["crops"]["dense_weight"]) == (9, 0.5)
    cfg["optim"]["epochs"], cfg["crops"]["dense_weight"] = 120, 1.0  # tiny-cpu's own values
    assert cfg == tiny and "extends" not in cfg


def test_preset_extends_loop_and_bad_value_fail_clearly(tmp_path):
    (tmp_path / "a.yaml").write_text(yaml.safe_dump({"extends": "b.yaml"}))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump({"extends": "a.yaml"}))
    with pytest.raises(ConfigError, match="loop: a -> b -> a"):
        load_config(preset=tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"extends": ["tiny-cpu", "vits14"]}))
    with pytest.raises(ConfigError, match="'extends' takes one preset"):
        load_config(preset=tmp_path / "c.yaml")


def _keys_that_differ(preset: dict, base: dict) -> set[str]:
    """`section.key` of every setting of `base` that `preset` changes."""
    return {
        f"{section}.{key}"
        for section in base
        for key in base[section]
        if preset[section][key] != base[section][key]
    }


def test_demo_preset_is_tiny_cpu_at_the_learning_tests_sizes_with_its_own_schedule():
    demo, tiny = load_config(preset="demo").to_dict(), load_config(preset="tiny-cpu").to_dict()
    assert _keys_that_differ(demo, tiny) == {
        "heads.dino_out_dim",
        "heads.ibot_out_dim",
        "heads.dino_hidden_dim",
        "heads.dino_bottleneck_dim",
        "crops.global_size",
        "crops.local_size",
        "optim.epochs",
        "optim.min_lr",  # kept at the 1e-6 the demo's regime was measured with
        "train.checkpoint_every",
        "monitor.every",
        "monitor.image_size",
        "monitor.label_column",
    }
    assert demo["optim"]["epochs"] * demo["optim"]["steps_per_epoch"] == 400
    # The sizes that leave the plateau on the phantoms (tests/test_learning.py, configs/demo.yaml).
    assert (demo["crops"]["global_size"], demo["crops"]["local_size"]) == (64, 32)
    assert demo["heads"]["dino_out_dim"] == demo["heads"]["ibot_out_dim"] == 64


def test_phantom_dbt_preset_is_tiny_cpu_with_dbt_pairs_and_its_own_schedule():
    # Its earlier DINOv2-style settings sat on the uniform plateau (docs/tomosynthesis.md): the DBT
    # ablation must run tiny-cpu's small-data regime and differ only in DBT, schedule and monitor.
    dbt, tiny = (
        load_config(preset="phantom-dbt").to_dict(),
        load_config(preset="tiny-cpu").to_dict(),
    )
    assert _keys_that_differ(dbt, tiny) == {
        "data.dbt_fraction",
        "optim.epochs",
        "optim.min_lr",  # kept at the 1e-6 the DBT ablation was measured with
        "dbt.proj_dim",
        "dbt.proj_hidden_dim",
        "dbt.pair_size",
        "monitor.every",
    }
    assert dbt["dbt"]["slice_loss_weight"] == 1.0
    assert dbt["data"]["batch_size"] * dbt["data"]["dbt_fraction"] == 4  # slice pairs per step
    assert dbt["optim"]["epochs"] * dbt["optim"]["steps_per_epoch"] == 600
