"""End to end on real data: the report on real `fl-sweep simulate` outputs, and the CI check
of the issue: `fl-sweep run grids/paper/ci_small.yaml` (real Ray, MLflow on sqlite in a
temp dir), then `fl-sweep report --claims` on it. Checked: the files, the tables'
structure, that every claim verdict follows from its numbers, the DP row, and the
artifacts and params on the sweep's MLflow parent run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sweeper.cli import main
from sweeper.report.page import CLAIMS_HEADER, PRIVACY_HEADER, TABLE_HEADER

REPO = Path(__file__).resolve().parents[3]
FL_SWEEP = str(Path(sys.executable).parent / "fl-sweep")


def check_claims_json(path: Path) -> list[dict]:
    """Every check's `ok` equals `value op bound`; verdict = N.A. without checks, else PASS
    iff all checks hold. Returns the claims."""
    claims = json.loads(path.read_text())["claims"]
    assert [c["number"] for c in claims] == [1, 2, 3, 4, 5, 6]
    for c in claims:
        for ch in c["checks"] + c["extras"]:
            want = ch["value"] >= ch["bound"] if ch["op"] == ">=" else ch["value"] <= ch["bound"]
            assert ch["ok"] == want, ch
        if not c["checks"]:
            assert c["verdict"] == "N.A." and c["note"]
        else:
            assert c["verdict"] == ("PASS" if all(ch["ok"] for ch in c["checks"]) else "FAIL")
            assert c["cells"]
    return claims


@pytest.mark.slow  # runs fl-sweep simulate, then the whole report
def test_report_on_real_simulate_outputs(tmp_path, md_tables):
    """Two real `fl-sweep simulate` runs (PGD vs M = 5 with σ = 0 and 0.025, 2 rounds on
    30 embedded writers) read back as a two-cell sweep."""
    common = ["--set", "data.source=embedded", "--set", "data.max_writers=30",
              "--set", "fl.clients_per_round=5", "--set", "fl.local_epochs=1",
              "--set", "fl.eval_subsample=200", "--set", "fl.device=cpu",
              "--set", "attack.kind=pgd", "--set", "attack.fraction=0.033",
              "--set", "attack.frequency=1", "--set", "attack.num_tasks=3",
              "--set", "attack.pgd_iterations=1", "--set", "defense.norm_bound=5",
              "--rounds", "2"]
    for sigma in ("0", "0.025"):
        assert main(["simulate", *common, "--set", f"defense.noise_sigma={sigma}",
                     "--out", str(tmp_path / "runs" / f"sigma{sigma}")]) == 0
    out = tmp_path / "rep"
    assert main(["report", str(tmp_path / "runs"), "--out", str(out), "--claims",
                 "--threshold", "tasks=3"]) == 0
    cells_tbl, claims_tbl, privacy_tbl = md_tables((out / "report.md").read_text())
    assert [r[0] for r in cells_tbl[1:]] == ["σ=0", "σ=0.025"]
    assert all(r[1] == "1" and r[2] == "2" for r in cells_tbl[1:])  # 1 seed, 2 rounds
    claims = check_claims_json(out / "claims.json")
    assert claims[5]["verdict"] in ("PASS", "FAIL")  # claim 6 has its cells
    assert [c["verdict"] for c in claims[:5]] == ["N.A."] * 5
    # q = C·K / K = 5 / 30, z = 0.025 / 5, over the 2 rounds run
    row = dict(zip(PRIVACY_HEADER, privacy_tbl[1]))
    assert (row["z"], row["q"], row["rounds"]) == ("0.005", "0.1667", "2")


@pytest.mark.ray
@pytest.mark.slow
def test_ci_small_sweep_report_with_claims(tmp_path, md_tables):
    storage = tmp_path / "sweeps"
    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
    t0 = time.monotonic()
    proc = subprocess.run(
        [FL_SWEEP, "run", str(REPO / "grids/paper/ci_small.yaml"), "--storage", str(storage),
         "--num-cpus", "2", "--object-store-mb", "200"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "4 finished" in proc.stdout
    t_run = time.monotonic() - t0

    out = tmp_path / "report"
    t1 = time.monotonic()
    assert main(["report", "ci_small", "--storage", str(storage), "--out", str(out),
                 "--claims", "--threshold", "tasks=5"]) == 0
    t_report = time.monotonic() - t1
    print(f"ci_small: sweep {t_run:.0f} s, report {t_report:.0f} s")

    for name in ("report.md", "report.html", "cells.csv", "claims.json", "privacy.json",
                 "figures/panels.png", "figures/overlay.png"):
        assert (out / name).is_file(), name
    cells_tbl, claims_tbl, privacy_tbl = md_tables((out / "report.md").read_text())
    assert tuple(cells_tbl[0]) == TABLE_HEADER
    assert [r[0] for r in cells_tbl[1:]] == ["σ=0", "σ=0.025"]
    assert all(r[1] == "2" and r[2] == "3" for r in cells_tbl[1:])  # 2 seeds, 3 rounds
    assert tuple(claims_tbl[0]) == CLAIMS_HEADER and len(claims_tbl) == 7
    claims = check_claims_json(out / "claims.json")
    assert [r[3] for r in claims_tbl[1:]] == [c["verdict"] for c in claims]
    # claim 6: M = 5 alone, the gap, and the main task (no unattacked cell loaded: the floor)
    assert claims[5]["verdict"] != "N.A." and len(claims[5]["checks"]) == 3
    assert "variance 0.025" in claims[5]["quote"] and claims[5]["extras"] == []
    assert claims[5]["checks"][0]["seeds_n"] == 2
    # weak DP of the σ = 0.025 cell: z = 0.025 / 5, q = 6 / 40 writers, 3 rounds
    row = dict(zip(PRIVACY_HEADER, privacy_tbl[1]))
    assert (row["cell"], row["z"], row["q"], row["rounds"]) == ("σ=0.025", "0.005", "0.15", "3")
    assert float(row["ε (PLD)"]) > 1000  # no meaningful guarantee

    # logged to the sweep's MLflow parent run
    from mlflow.tracking import MlflowClient

    man = json.loads((storage / "ci_small" / "sweep.json").read_text())
    client = MlflowClient(tracking_uri=man["tracking_uri"])
    arts = {a.path for a in client.list_artifacts(man["parent_run_id"], "report")}
    assert {"report/report.md", "report/claims.json", "report/figures"} <= arts
    params = client.get_run(man["parent_run_id"]).data.params
    assert float(params["dp.sigma_0.025.noise_multiplier"]) == pytest.approx(0.005)
