"""Fixtures shared by the sweeper tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def local_ray():
    """A real local Ray (2 CPUs, small object store) for one test module; the workers import
    this checkout (PYTHONPATH), not an installed copy."""
    ray = pytest.importorskip("ray")
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), old) if p)
    # address="local": always a fresh cluster. Plain ray.init() attaches to whatever
    # /tmp/ray/ray_current_cluster names, e.g. a cluster an earlier test's killed driver
    # left behind for a moment (CI failed on exactly that), and then refuses num_cpus.
    ray.init(address="local", num_cpus=2, include_dashboard=False,
             object_store_memory=100 * 2**20, logging_level="WARNING")
    yield
    ray.shutdown()
    if old is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = old
