"""`check_weights_source`: whether `--weights` names something `load_backbone` can take.

`training_intensity`: how the cache a run folder trained on was prepared (`prepare.intensity`).

At once and without torch: `random:ARCH/PATCH`, a run folder, an export or HF folder, or a file
whose first bytes fit its kind (io/weights.py). A prepared cache given by mistake is named as one.
"""

from __future__ import annotations

from pathlib import Path

from mammodino.errors import CheckpointError
from mammodino.io.weights import (
    EXPORT_MARKER,
    GIVE_WEIGHTS,
    HF_WEIGHTS,
    RUN_MARKER,
    check_safetensors_file,
    check_torch_file,
)
from mammodino.preprocess.cache import MANIFEST_NAME, is_prepared_cache


def check_weights_source(spec: str) -> None:
    """Raise CheckpointError unless `spec` names something `load_backbone` can take."""
    if spec.startswith("random:"):
        return
    path = Path(spec)
    if path.is_dir():
        markers = [RUN_MARKER, EXPORT_MARKER, *HF_WEIGHTS]
        if not any((path / name).exists() for name in markers):
            cache = f" (it holds {MANIFEST_NAME}: a prepared cache, not weights)"
            raise CheckpointError(
                f"{spec}: not a run or export folder: it holds none of {', '.join(markers)}"
                f"{cache if is_prepared_cache(path) else ''}; {GIVE_WEIGHTS}"
            )
    elif not path.is_file():
        raise CheckpointError(f"{spec}: no such file or folder; {GIVE_WEIGHTS}")
    elif path.suffix == ".safetensors":
        check_safetensors_file(path)
    else:
        check_torch_file(path)


def training_intensity(spec: str) -> str | None:
    """The intensity mode of the cache a run folder trained on, while that cache is still there.

    None for anything else (random weights, checkpoints, exports, shards, a cache moved away).
    """
    import yaml

    from mammodino.preprocess.prepare import recorded_intensity

    config = Path(spec) / "config.yaml"
    if not (Path(spec) / RUN_MARKER).is_dir() or not config.is_file():
        return None
    try:
        source = (yaml.safe_load(config.read_text()) or {}).get("data", {}).get("source")
    except (yaml.YAMLError, AttributeError):
        return None
    if not isinstance(source, str) or not is_prepared_cache(source):
        return None
    return recorded_intensity(source)
