"""fl_core stays a pure torch engine and uses no hidden global randomness."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

FL_CORE = Path(__file__).resolve().parents[2] / "fl_core"


def test_importing_fl_core_pulls_in_no_ray_mlflow_yaml_or_sweeper():
    code = (
        "import sys, fl_core.simulate, fl_core.data, fl_core.state, fl_core.build;"
        "bad = [m for m in ('ray', 'mlflow', 'yaml', 'sweeper', 'rich') if m in sys.modules];"
        "print(','.join(bad)); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, f"fl_core imported: {proc.stdout} {proc.stderr[-2000:]}"


GLOBAL_RNG = re.compile(
    r"np\.random\.(seed|rand|randn|randint|choice|shuffle|permutation|normal|uniform)\(|"
    r"^\s*import random\b|\brandom\.(random|randint|shuffle|choice|seed)\(|torch\.manual_seed\("
)


def test_no_global_rng_outside_rng_module():
    """Every draw derives from the seed (fl_core/rng.py); only rng.py may touch torch's
    global seed, inside `client_rng_scope`."""
    offenders = []
    for path in FL_CORE.rglob("*.py"):
        if path.name == "rng.py":
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if GLOBAL_RNG.search(line):
                offenders.append(f"{path.relative_to(FL_CORE.parent)}:{i}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_import_linter_contract_is_kept():
    """The contracts in pyproject.toml (static: catches imports on any path): fl_core imports
    no ray/mlflow/yaml/sweeper, and fl_core's packages import each other without a cycle."""
    exe = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(exe)], capture_output=True, text=True, cwd=FL_CORE.parent)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "2 kept, 0 broken" in proc.stdout
