"""Shared fixtures: a tiny random federated dataset for engine tests, and the real digits
in ../shared (tests needing them skip with the reason when ../shared is absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fl_core.data.base import FederatedData, from_writer_arrays

REPO = Path(__file__).resolve().parents[1]
SHARED_DIGITS = (REPO / ".." / "shared" / "data" / "femnist_digits").resolve()


def make_tiny_data(num_writers: int = 12, seed: int = 0) -> FederatedData:
    """Random pixels and labels, every writer owning some 7s; for engine mechanics only."""
    rng = np.random.default_rng(seed)
    train, test = {}, {}
    for k in range(num_writers):
        n = int(rng.integers(8, 20))
        labels = rng.integers(0, 10, n).astype(np.int64)
        labels[:2] = 7
        train[f"w{k:03d}"] = (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), labels)
        tl = np.array([7, int(rng.integers(0, 10))], np.int64)
        test[f"w{k:03d}"] = (rng.integers(0, 256, (2, 28, 28), dtype=np.uint8), tl)
    return from_writer_arrays(train, test, "tiny")


@pytest.fixture(scope="session")
def tiny_data() -> FederatedData:
    return make_tiny_data()


@pytest.fixture(scope="session")
def shared_digits() -> Path:
    if not (SHARED_DIGITS / "fed_emnist_digitsonly_train.h5").exists():
        pytest.skip(f"real digits not found at {SHARED_DIGITS} (../shared is absent on this machine)")
    return SHARED_DIGITS
