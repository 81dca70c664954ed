"""The committed runs of the CPU reproduction (docs/reproduction/runs/, `fl-sweep export`)
rebuild the claims table of docs/REPRODUCTION.md without any sweep storage: these are the
verdicts and headline numbers the page quotes (§4c/§4d). The numbers are read back from the
exported metrics and compared at the page's 3 printed decimals (± 0.0005)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sweeper.report.claims import FAIL, NA, PASS, check_claims
from sweeper.report.load import load_sweeps

RUNS = Path(__file__).resolve().parents[3] / "docs" / "reproduction" / "runs"


def test_the_committed_runs_rebuild_the_documented_verdicts():
    data = load_sweeps([str(RUNS)])
    by = {c.number: c for c in check_claims(data)}
    assert {n: c.verdict for n, c in by.items()} == {1: PASS, 2: PASS, 3: PASS, 4: FAIL, 5: PASS, 6: FAIL}
    # claim 1: fixed-frequency ε = 3.3% backdoor (avg); claim 4: N = 10 → 50 drop; claim 6:
    # the σ = 0.025 gap and the main-task drop under noise
    assert by[1].checks[0].value == pytest.approx(0.994, abs=5e-4)
    assert by[4].checks[-1].value == pytest.approx(0.012, abs=5e-4)
    assert [ch.value for ch in by[6].checks] == pytest.approx([0.504, -0.005, 0.038], abs=5e-4)
    assert all(c.checks and all(ch.seeds_n == 3 for ch in c.checks) for c in by.values())


POPULATION = RUNS.parent / "runs-issue23"


def test_the_committed_population_runs_rebuild_the_documented_verdicts():
    """§4d's paper-like population (writers with ≥ 40 train images, 3 seeds): claims 1–5 hold,
    claim 4 only just (its N = 10 → 50 drop 0.054 against the 0.05 bound), and claim 6 has no
    cells on it."""
    sweeps = sorted(str(p) for p in POPULATION.glob("cpu-claims-population-*") if p.is_dir())
    assert len(sweeps) == 8, sweeps  # fig 1/5, baseline, fig 3, fig 4a; seeds 0 and 1–2 each
    by = {c.number: c for c in check_claims(load_sweeps(sweeps))}
    assert {n: c.verdict for n, c in by.items()} == {1: PASS, 2: PASS, 3: PASS, 4: PASS, 5: PASS, 6: NA}
    assert by[1].checks[0].value == pytest.approx(0.908, abs=5e-4)
    assert by[4].checks[-1].value == pytest.approx(0.054, abs=5e-4)
    assert [ch.value for ch in by[5].checks] == pytest.approx([0.028, 0.002], abs=5e-4)
    assert all(ch.seeds_n == 3 for n in range(1, 6) for ch in by[n].checks)


def test_the_committed_project_boost_runs_rebuild_the_documented_verdicts():
    """§4d's driver's attacker (`attack.params.recipe: project-boost`, 3 seeds) beside the
    unattacked baseline: claims 1–3 hold, and the fixed-frequency attack still costs the main
    task 0.068 (the reference recipe 0.090)."""
    sweeps = [str(RUNS / "cpu-fig4_baseline")] + sorted(
        str(p) for p in POPULATION.glob("cpu-fig1_5-project-boost-*") if p.is_dir()
    )
    assert len(sweeps) == 3, sweeps
    by = {c.number: c for c in check_claims(load_sweeps(sweeps))}
    assert {n: by[n].verdict for n in (1, 2, 3)} == {1: PASS, 2: PASS, 3: PASS}
    assert by[1].checks[0].value == pytest.approx(0.939, abs=5e-4)
    main_intact = [e for e in by[1].extras if e.name == "main_intact"]
    assert main_intact[0].value == pytest.approx(0.068, abs=5e-4)
    assert all(ch.seeds_n == 3 for n in (1, 2, 3) for ch in by[n].checks)
