"""First-contact mistakes (issue 16): each is one line on stderr saying what is wrong and what to
do, exit code 1, nothing written, and found before torch is imported; output files get the
user's default permissions."""

from __future__ import annotations

import os
import runpy
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import fake_run
from mammodino.cli import main


def _one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 1
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith(f"mammodino {argv[0]}: error: ")
    return err


def _cache_folder(folder: Path) -> Path:
    folder.mkdir()
    (folder / "manifest.csv").write_text("id,image\n")
    (folder / "config.yaml").write_text("prepare: {}\n")  # prepare writes one too
    return folder


def test_report_on_a_cache_is_no_run(tmp_path, capsys):
    cache = _cache_folder(tmp_path / "cache")
    err = _one_line_error(capsys, ["report", str(cache)])
    assert "not a pretraining run" in err and "metrics.jsonl" in err and "prepared cache" in err
    assert not (cache / "report.html").exists()
    err = _one_line_error(capsys, ["report", str(tmp_path / "nowhere")])
    assert "no such folder" in err


def test_prepare_without_image_files_lists_what_was_ignored(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "cache"
    (src / "sub").mkdir(parents=True)
    for name in ("a.jpg", "b.JPG", "sub/c.jpg", "notes.txt", ".hidden.png"):
        (src / name).write_bytes(b"x")
    err = _one_line_error(capsys, ["prepare", str(src), str(out), "--no-progress"])
    assert "no image files found (4 files with other suffixes ignored: 3 .jpg, 1 .txt)" in err
    assert ".png" in err and ".dcm" in err  # the suffixes prepare takes
    assert not out.exists()
    (src / "sub" / "c.jpg").unlink()
    (src / "a.jpg").unlink()
    (src / "b.JPG").unlink()
    (src / "notes.txt").unlink()
    err = _one_line_error(capsys, ["prepare", str(src), str(out), "--no-progress"])
    assert "no image files found (the folder holds no files)" in err


def test_prepare_of_an_empty_csv_list(tmp_path, capsys):
    listing = tmp_path / "list.csv"
    listing.write_text("path\n")
    err = _one_line_error(capsys, ["prepare", str(listing), str(tmp_path / "o"), "--no-progress"])
    assert "lists no files" in err


def test_mistakes_are_found_before_torch_is_imported(tmp_path):
    """Each mistake is reported from the arguments alone: no torch import (seconds) first."""
    cache = _cache_folder(tmp_path / "cache")
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.pt").write_text("epoch 3\n")
    cases = [
        ["pretrain", "--config", "tiny-cpu", "--output-dir", str(tmp_path / "r"), "data.batch_size=abc"],
        ["embed", "--weights", str(tmp_path / "notes.pt"), "--input", str(cache), "--output", "f"],
        ["embed", "--weights", str(cache), "--input", str(cache), "--output", "f"],
        ["report", str(cache)],
        ["prepare", str(tmp_path / "empty"), str(tmp_path / "o")],
    ]  # fmt: skip
    code = (
        "import sys; from mammodino.cli import main\n"
        f"for argv in {cases!r}:\n"
        "    print(main(argv), 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.splitlines() == ["1 False"] * len(cases), out.stderr
    assert len(out.stderr.strip().splitlines()) == len(cases)


@pytest.fixture(params=[0o022, 0o027, 0o002])
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


@pytest.mark.parametrize("fmt", ["hf", "timm", "safetensors"])
def test_export_files_get_the_default_permissions(tmp_path, umask, fmt):
    run, _ = fake_run(tmp_path)
    out = tmp_path / fmt
    assert main(["export", str(run), "--format", fmt, "--output", str(out)]) == 0
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert any(name.endswith(".safetensors") for name in modes)
    assert modes == {name: 0o666 & ~umask for name in modes}  # 0644 under umask 022, not 0600


def test_the_entry_module_runs_the_cli_only_as_main(monkeypatch, capsys):
    """`python -m mammodino` runs the CLI; importing `mammodino.__main__` (a worker) runs nothing."""
    monkeypatch.setattr(sys, "argv", ["mammodino", "--help"])
    assert runpy.run_module("mammodino.__main__", run_name="mammodino.__main__")["main"] is main
    assert capsys.readouterr().out == ""
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("mammodino.__main__", run_name="__main__")
    assert exit_info.value.code == 0
    assert "pretrain" in capsys.readouterr().out
