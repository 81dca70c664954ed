"""Helpers for the data-source tests: tiny TFF-layout h5 files written by the test, and the
shared real digits loaded once per session."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from fl_core.data.base import FederatedData
from fl_core.data.tff_h5 import read_tff_dir

LEVELS = (np.arange(256) / 255).astype(np.float32)  # TFF pixel values: exactly k/255


def tiny_writers(seed: int, num_writers: int, max_images: int = 9) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per writer (float32 k/255 pixels with a white border, int32 labels)."""
    rng = np.random.default_rng(seed)
    out = {}
    for k in range(num_writers):
        n = int(rng.integers(1, max_images + 1))
        levels = rng.integers(0, 256, (n, 28, 28))
        levels[:, [0, -1], :] = 255  # paper-white border, as in TFF
        out[f"f{k:04d}_{k % 100:02d}"] = (LEVELS[levels], rng.integers(0, 10, n).astype(np.int32))
    return out


def write_tff_h5(path: Path, writers: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """TFF layout: examples/<writer>/{label, pixels}."""
    with h5py.File(path, "w") as f:
        ex = f.create_group("examples")
        for w, (px, lab) in writers.items():
            g = ex.create_group(w)
            g.create_dataset("label", data=lab)
            g.create_dataset("pixels", data=px)


@pytest.fixture(name="tiny_writers")
def tiny_writers_fixture():
    return tiny_writers


@pytest.fixture(name="write_tff_h5")
def write_tff_h5_fixture():
    return write_tff_h5


@pytest.fixture(scope="session")
def shared_h5(shared_digits: Path) -> FederatedData:
    """The 439 real writers, read by the tff-h5 loader (skips when ../shared is absent)."""
    return read_tff_dir(shared_digits)
