"""`fl-sweep --help` starts without Ray, MLflow, torch or pandas (issue 10, item 2): a
property of the imports, checked in a fresh interpreter; the timing is bench/cli_startup.py.
(`validate` without Ray and MLflow: tests/sweeper/test_grid.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("ray", "mlflow", "torch", "pandas", "matplotlib")

PROBE = """
import contextlib, io, json, sys
from sweeper.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    rc = main(sys.argv[1:])
print(json.dumps({"rc": rc, "loaded": [m for m in %r if m in sys.modules]}))
""" % (HEAVY,)


def loaded_after(*argv: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, *argv], cwd=REPO, capture_output=True,
                         text=True, timeout=300, env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("argv", [["--help"], ["simulate", "--help"], ["report", "--help"],
                                  ["data", "download", "--help"]])
def test_help_imports_no_heavy_library(argv):
    assert loaded_after(*argv) == {"rc": 0, "loaded": []}


def test_help_lists_the_download_variants_there_are():
    from fl_core.data.download import VARIANTS
    from sweeper.cmd_data import VARIANT_NAMES

    assert tuple(VARIANTS) == VARIANT_NAMES


def test_validate_checks_a_grid_without_torch():
    """`validate` reads the writers (numpy, h5py) and plans with numpy streams: no torch, Ray,
    MLflow or pandas (fl_core.rng and fl_core.types import torch only where a tensor is made)."""
    assert loaded_after("validate", "grids/smoke.yaml") == {"rc": 0, "loaded": []}
