"""Safe weights (issue 9): a checkpoint that would run code when unpickled is refused by every
loader (checkpoint, backbone, weight conversion, `pretrain --resume`, `embed --weights`), and the
code never runs (its marker file is not created)."""

from __future__ import annotations

import builtins
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import prepared_columns, subprocess_env, write_cache, write_preset
from mammodino.errors import CheckpointError
from mammodino.eval.backbone import load_backbone
from mammodino.models.convert import read_state_dict
from mammodino.train.checkpoint import FORMAT, VERSION, load_checkpoint


class Exploit:
    """Unpickling this calls open(marker, 'w'): the file appears if the loader runs pickled code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


def write_exploits(folder: Path, marker: Path) -> dict[str, Path]:
    """The same payload as a torch zip checkpoint, a legacy pickle and a state-dict-like file."""
    folder.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "version": VERSION, "step": 1, "teacher": {"x": Exploit(marker)},
               "student": {}, "arch": {}, "config": ""}  # fmt: skip
    files = {"zip": folder / "last.pt", "legacy": folder / "step_00000001.pt",
             "weights": folder / "backbone.pth", "bin": folder / "pytorch_model.bin"}  # fmt: skip
    torch.save(payload, files["zip"])
    files["legacy"].write_bytes(pickle.dumps(payload, protocol=2))
    torch.save({"state_dict": {"pos_embed": Exploit(marker)}}, files["weights"])
    torch.save({"model": Exploit(marker)}, files["bin"])
    return files


@pytest.fixture
def exploits(tmp_path):
    marker = tmp_path / "PWNED"
    return write_exploits(tmp_path / "weights", marker), marker


def test_the_exploit_is_armed(tmp_path):
    """Sanity: an unsafe torch.load does run the payload (so the refusals below mean something)."""
    marker = tmp_path / "armed"
    files = write_exploits(tmp_path / "w", marker)
    torch.load(files["zip"], weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("kind", ["zip", "legacy", "weights", "bin"])
def test_load_checkpoint_refuses(exploits, kind):
    files, marker = exploits
    with pytest.raises(CheckpointError):
        load_checkpoint(files[kind])
    assert not marker.exists()


def test_load_checkpoint_of_a_folder_refuses(exploits):
    files, marker = exploits
    with pytest.raises(CheckpointError):
        load_checkpoint(files["zip"].parent)
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["zip", "legacy", "weights", "bin"])
def test_read_state_dict_refuses(exploits, kind):
    files, marker = exploits
    with pytest.raises(CheckpointError):
        read_state_dict(files[kind])
    assert not marker.exists()


def test_read_state_dict_of_an_hf_folder_refuses(tmp_path):
    marker = tmp_path / "PWNED"
    folder = tmp_path / "hf"
    folder.mkdir()
    torch.save({"pos_embed": Exploit(marker)}, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError):
        read_state_dict(folder)
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["zip", "legacy", "weights", "bin"])
def test_load_backbone_refuses(exploits, kind):
    files, marker = exploits
    with pytest.raises(CheckpointError):
        load_backbone(files[kind])
    assert not marker.exists()


def test_load_backbone_of_a_run_folder_refuses(tmp_path):
    marker = tmp_path / "PWNED"
    files = write_exploits(tmp_path / "run" / "checkpoints", marker)
    with pytest.raises(CheckpointError):
        load_backbone(files["zip"].parent.parent)
    assert not marker.exists()


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mammodino", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=subprocess_env(),
    )


@pytest.mark.slow
@pytest.mark.multiproc
def test_cli_pretrain_resume_and_embed_refuse(tmp_path):
    """`pretrain --resume` on a run whose last.pt is hostile, `embed --weights` on the file."""
    marker = tmp_path / "PWNED"
    cache = write_cache(tmp_path / "cache", columns=prepared_columns, labels=None)
    run = tmp_path / "run"
    run.mkdir()
    preset = write_preset(tmp_path / "tiny.yaml", cache, 2)
    from mammodino.config import load_config

    load_config(preset=preset).save(run / "config.yaml")
    files = write_exploits(run / "checkpoints", marker)

    out = _cli("pretrain", "--output-dir", str(run), "--resume", "--no-progress")
    assert out.returncode == 1, out.stderr[-2000:]
    assert "error" in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert not marker.exists()

    for weights in (files["zip"], files["weights"], run):
        out = _cli("embed", "--weights", str(weights), "--input", str(cache), "--output",
                   str(tmp_path / "feats"), "--no-progress")  # fmt: skip
        assert out.returncode == 1, out.stderr[-2000:]
        assert "Traceback" not in out.stderr
        assert not marker.exists()


def test_features_file_with_pickled_objects_is_refused(tmp_path):
    """A FEATS .npz whose `ids` is a pickled object array: refused cleanly, nothing executed."""
    import numpy as np

    from mammodino.errors import MammodinoError
    from mammodino.eval.features import load_features

    marker = tmp_path / "PWNED"
    ids = np.empty(2, dtype=object)
    ids[:] = [Exploit(marker), "b"]
    np.savez(tmp_path / "features.npz", ids=ids, cls=np.zeros((2, 4)), patch_mean=np.zeros((2, 4)))
    with pytest.raises(MammodinoError):
        load_features(tmp_path / "features.npz")
    assert not marker.exists()


def _embed_error(capsys, weights: Path, tmp_path: Path) -> str:
    """`embed --weights WEIGHTS`: exit 1 with one line on stderr, and no output written."""
    from mammodino.cli import main

    feats = tmp_path / "feats"
    argv = ["embed", "--weights", str(weights), "--input", str(tmp_path), "--output", str(feats),
            "--no-progress"]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not feats.exists()
    return err


PNG = b"\x89PNG\r\n\x1a\n" + bytes(200)


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("renamed.safetensors", PNG, "renamed.safetensors: not a safetensors file (it is a PNG image)"),
        ("empty.safetensors", b"", "empty.safetensors: empty file, not a safetensors file"),
        ("notes.pt", b"epoch 3 loss 0.41\n", "notes.pt: not a PyTorch checkpoint (it is text)"),
        ("empty.pt", b"", "empty.pt: empty file, not a PyTorch checkpoint"),
    ],
)  # fmt: skip
def test_embed_on_a_file_that_is_no_weights_is_one_line(tmp_path, capsys, name, content, expected):
    weights = tmp_path / name
    weights.write_bytes(content)
    err = _embed_error(capsys, weights, tmp_path)
    assert expected in err and "random:ARCH/PATCH" in err  # what is wrong, and what to give


def test_embed_on_a_cache_folder_says_it_is_no_run(tmp_path, capsys):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "manifest.csv").write_text("id,image\n")
    err = _embed_error(capsys, cache, tmp_path)
    assert "not a run or export folder" in err and "manifest.csv: a prepared cache" in err
    assert "model.safetensors: weights file not found" not in err  # no file the user never named


def test_embed_on_a_missing_path(tmp_path, capsys):
    err = _embed_error(capsys, tmp_path / "nowhere.pt", tmp_path)
    assert "nowhere.pt: no such file or folder" in err


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_pickle_is_refused_without_a_torch_warning(tmp_path, capsys, recwarn, protocol):
    """torch warns "Detected pickle protocol 4" before refusing: only our one line shows."""
    marker = tmp_path / "PWNED"
    weights = tmp_path / "evil.pt"
    weights.write_bytes(pickle.dumps({"model": Exploit(marker)}, protocol=protocol))
    err = _embed_error(capsys, weights, tmp_path)
    assert "evil.pt: not a tensor-only checkpoint" in err and "could run code" in err
    assert not [w for w in recwarn if "pickle protocol" in str(w.message)]
    assert not marker.exists()


def test_load_checkpoint_of_a_text_file(tmp_path):
    path = tmp_path / "last.pt"
    path.write_text("not a checkpoint\n")
    with pytest.raises(CheckpointError, match="last.pt: not a PyTorch checkpoint \\(it is text\\)"):
        load_checkpoint(path)
