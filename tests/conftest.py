"""Shared fixtures: the real data directory (CI points BPFREE_DATA_DIR at it) and small tasks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# one intra-op thread: with two, a test run beside any other busy process (a benchmark) spins on
# OpenMP barriers — the learning tests in test_contract took 6 min 42 s instead of 33 s so
torch.set_num_threads(1)


def real_data_dir(name: str = "mnist") -> Path | None:
    """The directory holding ``name`` if the real IDX files are available, else None."""
    for cand in (os.environ.get("BPFREE_DATA_DIR"), str(Path(__file__).parents[2] / "shared" / "data")):
        if cand and (Path(cand) / name).is_dir():
            return Path(cand)
    return None


@pytest.fixture
def mnist_dir() -> Path:
    d = real_data_dir("mnist")
    if d is None:
        pytest.skip("real MNIST not found: set BPFREE_DATA_DIR to a folder with mnist/")
    return d
