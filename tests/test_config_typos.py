"""Config typos (issue 9): a misspelt key in any override or YAML preset fails at start, before any
work or output, with the valid keys of that level listed."""

from __future__ import annotations

import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
import yaml

from mammodino.cli import main
from mammodino.config import load_config
from mammodino.errors import ConfigError

DEFAULTS = yaml.safe_load((resources.files("mammodino") / "configs" / "default.yaml").read_text())


def leaf_keys(tree: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in tree.items():
        if isinstance(value, dict):
            keys += leaf_keys(value, f"{prefix}{key}.")
        else:
            keys.append(f"{prefix}{key}")
    return keys


LEAVES = leaf_keys(DEFAULTS)


def typo(key: str) -> str:
    """Swap two letters of the last part (or append one when too short)."""
    *head, last = key.split(".")
    bad = last[1] + last[0] + last[2:] if len(last) > 2 and last[0] != last[1] else last + "x"
    return ".".join([*head, bad])


def test_every_default_key_is_covered():
    assert len(LEAVES) > 100  # the defaults hold ~130 keys; each gets a typo below


@pytest.mark.parametrize("key", LEAVES)
def test_override_typo_lists_valid_keys(key):
    section, _, _ = key.rpartition(".")
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[f"{typo(key)}=1"])
    message = str(err.value)
    assert repr(typo(key)) in message
    assert key.rpartition(".")[2] in message  # the right spelling is among the listed keys
    valid = leaf_siblings(section)
    assert all(v in message for v in valid)


def leaf_siblings(section: str) -> list[str]:
    node = DEFAULTS
    for part in filter(None, section.split(".")):
        node = node[part]
    return list(node)


@pytest.mark.parametrize("section", sorted(DEFAULTS))
def test_section_typo_lists_sections(section):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[f"{section}s.x=1"])
    assert all(s in str(err.value) for s in DEFAULTS)


@pytest.mark.parametrize(
    "key", ["optim.base_lr", "train.seed", "crops.global_size", "prepare.margin"]
)
def test_yaml_preset_typo_lists_valid_keys(tmp_path, key):
    section, name = key.split(".")
    preset = tmp_path / "preset.yaml"
    preset.write_text(yaml.safe_dump({section: {typo(name): 1}}))
    with pytest.raises(ConfigError) as err:
        load_config(preset=preset)
    assert name in str(err.value)
    preset.write_text(yaml.safe_dump({section + "x": {name: 1}}))
    with pytest.raises(ConfigError) as err:
        load_config(preset=preset)
    assert section in str(err.value)


def test_section_given_a_scalar_lists_its_keys():
    with pytest.raises(ConfigError, match="base_lr"):
        load_config(overrides=["optim=3"])


def _cli_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_pretrain_override_typo_fails_before_any_output(tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["pretrain", "--config", "tiny-cpu", "--output-dir", str(run), "--no-progress",
            "data.source=/nowhere", "optim.base_lrr=0.1"]  # fmt: skip
    err = _cli_error(capsys, argv)
    assert "'optim.base_lrr'" in err and "base_lr" in err and "warmup_epochs" in err
    assert not run.exists()


def test_pretrain_yaml_typo_fails_before_any_output(tmp_path, capsys):
    preset = tmp_path / "typo.yaml"
    preset.write_text("train:\n  checkpoint_evry: 5\n")
    run = tmp_path / "run"
    err = _cli_error(capsys, ["pretrain", "--config", str(preset), "--output-dir", str(run)])
    assert "'train.checkpoint_evry'" in err and "checkpoint_every" in err
    assert not run.exists()


def test_pretrain_resume_override_typo(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    load_config(preset="tiny-cpu").save(run / "config.yaml")
    err = _cli_error(capsys, ["pretrain", "--output-dir", str(run), "--resume", "optim.max_step=3"])
    assert "max_steps" in err
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml"]


def _sources(folder: Path) -> Path:
    import cv2
    import numpy as np

    folder.mkdir()
    image = np.zeros((64, 48), np.uint16)
    image[8:56, :30] = 30000
    cv2.imwrite(str(folder / "a.png"), image)
    return folder


def test_prepare_override_typo_fails_before_any_output(tmp_path, capsys):
    src, out = _sources(tmp_path / "src"), tmp_path / "cache"
    err = _cli_error(
        capsys, ["prepare", str(src), str(out), "prepare.cache_sise=64", "--no-progress"]
    )
    assert "'prepare.cache_sise'" in err and "cache_size" in err and "mask_size" in err
    assert not (out / "manifest.csv").exists() and not (out / "images").exists()


def test_prepare_yaml_typo_fails_before_any_output(tmp_path, capsys):
    src, out = _sources(tmp_path / "src"), tmp_path / "cache"
    preset = tmp_path / "typo.yaml"
    preset.write_text("prepare:\n  pectorall: true\n")
    err = _cli_error(
        capsys, ["prepare", str(src), str(out), "--no-progress", "--config", str(preset)]
    )
    assert "'prepare.pectorall'" in err and "pectoral" in err
    assert not (out / "manifest.csv").exists() and not (out / "images").exists()


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("optim.max_steps=abc", "'optim.max_steps' takes a whole number, got 'abc'"),
        ("data.batch_size=abc", "'data.batch_size' takes a whole number, got 'abc'"),
        ("optim.base_lr=fast", "'optim.base_lr' takes a number, got 'fast'"),
        ("data.batch_size=2.5", "'data.batch_size' takes a whole number, got 2.5"),
        ("train.deterministic=1", "'train.deterministic' takes true or false, got 1"),
        ("crops.global_scale=0.5", "'crops.global_scale' takes a list of numbers, got 0.5"),
    ],
)
def test_pretrain_bad_value_is_one_line_before_any_output(tmp_path, capsys, override, expected):
    run = tmp_path / "run"
    argv = ["pretrain", "--config", "tiny-cpu", "--output-dir", str(run), "--no-progress",
            "data.source=/nowhere", override]  # fmt: skip
    err = _cli_error(capsys, argv)
    key = override.split("=")[0]
    assert expected in err and f"e.g. {key}=" in err  # what is wrong, and a value that works
    assert not run.exists()


@pytest.mark.parametrize(
    ("override", "value"),
    [("data.batch_size=16.0", 16), ("optim.warmup_epochs=0.5", 0.5), ("optim.max_steps=", None),
     ("model.init=2024", "2024"), ("model.drop_path_rate=0", 0)],
)  # fmt: skip
def test_values_of_the_right_kind_are_accepted(override, value):
    section, key = override.split("=")[0].split(".")
    assert load_config(overrides=[override])[section][key] == value


def test_bad_preset_value_names_the_key(tmp_path):
    preset = tmp_path / "bad.yaml"
    preset.write_text("optim:\n  epochs: many\n")
    with pytest.raises(ConfigError, match="'optim.epochs' takes a whole number, got 'many'"):
        load_config(preset=preset)


def test_bad_value_fails_before_torch_is_imported(tmp_path):
    """The value is checked before the heavy imports: the error comes at once, not after torch."""
    code = (
        "import sys; from mammodino.cli import main; "
        f"rc = main(['pretrain', '--config', 'tiny-cpu', '--output-dir', {str(tmp_path)!r}, "
        "'optim.max_steps=abc']); print(rc, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["1", "False"]
    assert len(out.stderr.strip().splitlines()) == 1 and "max_steps" in out.stderr
