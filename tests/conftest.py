"""Shared fixtures: where the real data lives, and torch's global settings kept per test.

Plain helpers (synthetic data, tiny configs) are in helpers.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import shared_data_dir


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked slow run first: under `make test`'s two workers (pytest-xdist, one file per
    worker at a time) the minutes-long files then start at once instead of ending the run alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: else as found


@pytest.fixture
def mini_mias_dir() -> Path:
    return shared_data_dir("mini-mias")


@pytest.fixture
def dicom_samples_dir() -> Path:
    return shared_data_dir("dicom-samples")


@pytest.fixture(autouse=True)
def _torch_single_thread():
    """Tests run with one intra-op thread: deterministic and fair on a 2-core machine."""
    try:
        import torch
    except ImportError:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _restore_determinism():
    """train.deterministic switches torch's global flag on: switch it back for other tests."""
    try:
        import torch
    except ImportError:
        yield
        return
    previous = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(previous)
