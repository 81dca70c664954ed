"""`bench/scale.py --rss` in miniature: one trial per K in a fresh process, an in-memory
and a lazy population, the table's ratio to K = 10^3 (figures are the benchmark's job;
here the plumbing)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _scale():
    spec = importlib.util.spec_from_file_location("bench_scale_rss", BENCH / "scale.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    sys.path.insert(0, str(BENCH))
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(BENCH))
    return mod


def test_rss_table_divides_by_k_1000():
    scale = _scale()
    cells = [{"K": 1000, "lazy": False, "peak_rss_mb": 1000.0, "n_k_mb": 0.0, "import_rss_mb": 500.0,
              "setup_s": 1.0, "s_per_round": 2.0},
             {"K": 10**6, "lazy": True, "peak_rss_mb": 1100.0, "n_k_mb": 8.0, "import_rss_mb": 500.0,
              "setup_s": 1.0, "s_per_round": 2.0},
             {"K": 10**7, "error": "timed out"}]
    rows = scale.rss_table(cells).splitlines()
    assert "| 1,000,000 | lazy | 1,100 | 1.100 | 8.0 | 1.092 |" in rows[3]  # 1100/1000, (1100-8)/1000
    assert "failed: timed out" in rows[4]


@pytest.mark.slow
def test_rss_children_run_one_trial_each(tmp_path):
    scale = _scale()
    out = tmp_path / "rss.json"
    rc = scale.main(["--backends", "", "--rss", "--rss-sizes", "1000,30000", "--rss-rounds", "1",
                     "--rss-clients", "2", "--rss-eval", "40", "--examples", "5", "--timeout", "300",
                     "--json", str(out)])
    assert rc == 0
    cells = json.loads(out.read_text())["rss"]
    assert [(c["K"], c["lazy"]) for c in cells] == [(1000, False), (30000, True)]
    lazy = cells[1]
    assert lazy["n_k_mb"] == 30000 * 8 / 2**20 and lazy["peak_rss_mb"] >= lazy["import_rss_mb"] > 0
    # 1 round: 2 cohort members (one of them the attacker) + 10 targets for the runner and
    # 10 for the evaluator's D_mal; test splits: ≤ 40 eval writers + the targets' twice
    assert lazy["rendered"][0] <= 2 + 10 + 10 and lazy["rendered"][1] <= 40 + 10 + 10
