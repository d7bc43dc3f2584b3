"""benchmarks/block_features.py: several blocks' CLS and mean patch tokens, in `embed`'s order."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import load_benchmark, write_cache
from mammodino.cli import main
from mammodino.errors import ConfigError
from mammodino.eval.backbone import load_backbone
from mammodino.eval.features import load_features


@pytest.fixture
def block_features():
    return load_benchmark("block_features")


def test_block_numbers(block_features):
    assert block_features.block_indices("4", 12) == [8, 9, 10, 11]
    assert block_features.block_indices("1", 12) == [11]
    assert block_features.block_indices("12,3,6,9,3", 12) == [2, 5, 8, 11]
    for bad in ("13", "0", "0,4", "4,13", "a"):
        with pytest.raises(ConfigError, match="--blocks"):
            block_features.block_indices(bad, 12)


def test_the_last_block_is_embeds_features_and_blocks_concatenate(block_features, tmp_path):
    cache = write_cache(tmp_path / "cache", count=5)
    weights = "random:vit_tiny/16"
    args = ["embed", "--weights", weights, "--image-size", "32", "--input", str(cache)]
    assert main([*args, "--output", str(tmp_path / "embed"), "--no-progress"]) == 0
    embedded = load_features(tmp_path / "embed")

    block_features.block_features(weights, str(cache), "1", 32, tmp_path / "b1")
    last = load_features(tmp_path / "b1")
    rows, cls, patch_mean = last.meta, last.cls, last.patch_mean
    assert [r["id"] for r in rows] == list(embedded.ids)
    np.testing.assert_allclose(cls, embedded.cls, atol=1e-5)
    np.testing.assert_allclose(patch_mean, embedded.patch_mean, atol=1e-5)

    block_features.block_features(weights, str(cache), "2,12,7", 32, tmp_path / "b3")
    three = load_features(tmp_path / "b3")
    cls3, mean3 = three.cls, three.patch_mean
    assert cls3.shape == (5, 3 * 192) and mean3.shape == (5, 3 * 192)
    np.testing.assert_allclose(cls3[:, -192:], embedded.cls, atol=1e-5)  # block 12 comes last
    # Block 2's CLS token, computed by hand: the tokens through two blocks and the final norm.
    backbone = load_backbone(weights, image_size=32)
    model = backbone.model
    batch = backbone.preprocess(block_features.read_cached_float(str(cache), rows[0]))[None]
    with torch.inference_mode():
        tokens = model.prepare_tokens(batch)
        tokens = model.blocks[1](model.blocks[0](tokens))
        expected = model.norm(tokens)[0, 0].numpy()
    np.testing.assert_allclose(cls3[0, :192], expected, atol=1e-5)
