import json

import cv2
import numpy as np
import pytest
import torch

import mammodino
from helpers import write_csv
from mammodino.cli import main
from mammodino.eval.backbone import load_backbone, square_canvas
from mammodino.eval.features import load_features


def _tiny_cache(folder, n=5, shape=(48, 30)):
    (folder / "images").mkdir(parents=True)
    rows = []
    rng = np.random.default_rng(0)
    for i in range(n):
        image = (rng.random(shape) * 65535).astype(np.uint16)
        cv2.imwrite(str(folder / "images" / f"im{i}.png"), image)
        rows.append(
            {
                "id": f"id{i}",
                "source": f"s{i}.png",
                "image": f"images/im{i}.png",
                "patient_id": f"p{i // 2}",
                "laterality": "L",
                "view": "CC",
                "cache_height": shape[0],
                "cache_width": shape[1],
            }
        )
    write_csv(folder / "manifest.csv", rows)


def test_square_canvas_pads_right_and_bottom():
    image = np.ones((4, 2), np.float32)
    canvas = square_canvas(image)
    assert canvas.shape == (4, 4)
    assert canvas[:, :2].sum() == 8 and canvas[:, 2:].sum() == 0


def test_extract_features_shapes_and_package_entry():
    backbone = mammodino.load_backbone("random:vit_tiny/16", image_size=32)
    out = backbone.extract_features([np.zeros((40, 20), np.float32), np.ones((20, 20))])
    assert out["cls"].shape == (2, 192)
    assert out["patch_tokens"].shape == (2, 2, 2, 192)
    torch.testing.assert_close(out["patch_mean"], out["patch_tokens"].mean(dim=(1, 2)))


def test_random_backbone_is_reproducible():
    a = load_backbone("random:vit_tiny/16", image_size=32).model.state_dict()
    b = load_backbone("random:vit_tiny/16", image_size=32).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_embed_command_resumes_to_identical_features(tmp_path):
    _tiny_cache(tmp_path / "cache")
    args = [
        "embed",
        "--weights",
        "random:vit_tiny/16",
        "--image-size",
        "32",
        "--input",
        str(tmp_path / "cache"),
        "--batch-size",
        "2",
        "--patch-grid",
        "--no-progress",
    ]
    assert main([*args, "--output", str(tmp_path / "a")]) == 0
    first = load_features(tmp_path / "a")
    assert first.cls.shape == (5, 192) and first.patch_grid.shape == (5, 2, 2, 192)
    assert [m["patient_id"] for m in first.meta] == ["p0", "p0", "p1", "p1", "p2"]
    assert first.meta[0]["grid_x1"] == "48"  # the grid covers the padded square of the cache
    # A rerun reuses the finished parts and gives the same file content.
    assert main([*args, "--output", str(tmp_path / "a")]) == 0
    np.testing.assert_array_equal(load_features(tmp_path / "a").cls, first.cls)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_embed_on_cuda_without_one_is_one_line(tmp_path, capsys):
    """The default (auto) embeds on the CPU here; asking for CUDA says what to give instead."""
    _tiny_cache(tmp_path / "cache")
    args = ["embed", "--weights", "random:vit_tiny/16", "--image-size", "32", "--no-progress"]
    args += ["--input", str(tmp_path / "cache")]
    assert main([*args, "--output", str(tmp_path / "auto")]) == 0
    assert load_features(tmp_path / "auto").cls.shape == (5, 192)
    capsys.readouterr()
    assert main([*args, "--output", str(tmp_path / "cuda"), "--device", "cuda"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        "mammodino embed: error: --device=cuda but no CUDA device is visible; use --device=cpu"
    )
    assert not (tmp_path / "cuda").exists()


def test_unknown_weights_give_clear_error(tmp_path):
    from mammodino.errors import CheckpointError

    with pytest.raises(CheckpointError, match="nothing: no such file or folder"):
        load_backbone(tmp_path / "nothing")


def _save_tiny_vit(path, seed: int) -> None:
    from mammodino.models.vit import build_vit

    torch.manual_seed(seed)
    torch.save(build_vit("vit_tiny", img_size=32, patch_size=16, in_chans=1).state_dict(), path)


def test_embed_chunks_are_keyed_on_the_weights_not_their_path(tmp_path, capsys):
    """Retrained weights at the same path start over (one line why); a copy elsewhere reuses."""
    _tiny_cache(tmp_path / "cache")
    weights, out = tmp_path / "backbone.pth", tmp_path / "feats"

    def embed(path, output=out) -> str:
        argv = ["embed", "--weights", str(path), "--image-size", "32", "--input",
                str(tmp_path / "cache"), "--output", str(output), "--no-progress"]  # fmt: skip
        assert main(argv) == 0
        return capsys.readouterr().out

    _save_tiny_vit(weights, seed=1)
    assert "starting over" not in embed(weights)
    first = load_features(out).cls
    parts = sorted((out / "parts").glob("part_*.npz"))

    copy = tmp_path / "elsewhere.pth"
    copy.write_bytes(weights.read_bytes())
    assert "starting over" not in embed(copy)  # same tensors under another name: reused
    assert sorted((out / "parts").glob("part_*.npz")) == parts

    _save_tiny_vit(weights, seed=2)  # "retrained": other tensors, same path string
    lines = [line for line in embed(weights).splitlines() if "starting over" in line]
    assert len(lines) == 1 and "1 finished chunks" in lines[0] and "weights_sha256" in lines[0]
    second = load_features(out).cls
    assert not np.allclose(first, second)
    embed(weights, tmp_path / "clean")
    np.testing.assert_array_equal(load_features(tmp_path / "clean").cls, second)
    assert len(list((out / "parts").glob("part_*.npz"))) == 1  # the stale chunk is gone


def test_embed_chunks_from_another_kind_of_device_are_not_reused(tmp_path, capsys):
    """Chunks a GPU made (stood in for by their key) are not mixed with a CPU's on resume."""
    _tiny_cache(tmp_path / "cache")
    weights, out = tmp_path / "backbone.pth", tmp_path / "feats"
    _save_tiny_vit(weights, seed=1)
    argv = ["embed", "--weights", str(weights), "--image-size", "32", "--input",
            str(tmp_path / "cache"), "--output", str(out), "--no-progress", "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    key_file = out / "parts" / "key.json"
    key = json.loads(key_file.read_text())
    assert key["device"] == "cpu"
    capsys.readouterr()

    assert main(argv) == 0  # same device: every chunk reused
    assert "starting over" not in capsys.readouterr().out

    key_file.write_text(json.dumps({**key, "device": "cuda"}) + "\n")
    assert main(argv) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "starting over" in line]
    assert len(lines) == 1 and "device cuda -> cpu" in lines[0]
    assert json.loads(key_file.read_text())["device"] == "cpu"


def _record_intensity(cache, mode):
    """The settings record `prepare` writes, reduced to what the check reads."""
    (cache / "prepare_settings.json").write_text(json.dumps({"intensity": mode, "crop": True}))


def test_embed_names_a_cache_stretched_otherwise_than_the_training_one(tmp_path, capsys):
    from helpers import fake_run

    run, _ = fake_run(tmp_path)
    trained_on, given = tmp_path / "trained-on", tmp_path / "given"
    _tiny_cache(trained_on)
    _tiny_cache(given)
    (run / "config.yaml").write_text(f"data:\n  source: {trained_on}\n")
    args = ["embed", "--weights", str(run), "--image-size", "28", "--no-progress"]
    _record_intensity(trained_on, "none")
    _record_intensity(given, "dataset")
    assert main([*args, "--input", str(given), "--output", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert "trained on a cache prepared with --intensity none" in err
    assert "the input was prepared with --intensity dataset" in err
    _record_intensity(given, "none")  # alike: nothing to say
    assert main([*args, "--input", str(given), "--output", str(tmp_path / "b")]) == 0
    assert "warning" not in capsys.readouterr().err
    # A record from before the setting means the cache was prepared as read.
    (given / "prepare_settings.json").write_text(json.dumps({"crop": True}))
    _record_intensity(trained_on, "dataset")
    assert main([*args, "--input", str(given), "--output", str(tmp_path / "c")]) == 0
    assert "the input was prepared with --intensity none" in capsys.readouterr().err
