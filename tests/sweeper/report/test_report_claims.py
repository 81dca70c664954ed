"""Golden tests of the claim verdicts: data built so that a claim must PASS, must FAIL (one
number moved past its threshold) or is N.A. (its cells missing); and in every case the
verdict follows from the printed numbers alone."""

from __future__ import annotations

import math

import pytest

from sweeper.report.claims import (
    FAIL,
    NA,
    PASS,
    Check,
    Thresholds,
    check_claims,
    holds,
    make_check,
    verdict_of,
)
from sweeper.report.load import load_sweeps


def _verdicts(results):
    return {c.number: c.verdict for c in results}


def assert_verdicts_follow_from_numbers(results, th=Thresholds()):
    """Each check's `ok` is `value op bound` and the verdict is PASS iff all hold."""
    for c in results:
        for ch in c.checks:
            assert ch.ok == (ch.value >= ch.bound if ch.op == ">=" else ch.value <= ch.bound)
            assert 0 <= ch.seeds_ok <= ch.seeds_n
        if not c.checks:
            assert c.verdict == NA and c.note
        else:
            assert c.verdict == (PASS if all(ch.ok for ch in c.checks) else FAIL)
            assert c.cells, "a verdict names the cells it used"


def test_all_claims_pass_on_designed_data(paper_sweep):
    res = check_claims(load_sweeps([str(paper_sweep)]))
    assert _verdicts(res) == {i: PASS for i in range(1, 7)}
    assert_verdicts_follow_from_numbers(res)
    by = {c.number: c for c in res}
    # claim 1's verdict is the fixed-frequency cell's backdoor alone: 0.95 ≥ 0.8
    assert len(by[1].checks) == 1 and (by[1].checks[0].value, by[1].checks[0].bound) == pytest.approx((0.95, 0.8))
    # its extra checks: random sampling 0.92 ≥ 0.8, and main_intact against the loaded
    # baseline for each schedule: 0.95 − 0.94 = 0.01 ≤ 0.02
    assert [ch.name for ch in by[1].extras] == ["random_sampling_high", "main_intact", "main_intact"]
    assert [ch.value for ch in by[1].extras] == pytest.approx([0.92, 0.01, 0.01])
    assert by[1].extras[1].bound == pytest.approx(0.02)
    assert "main-task cost +0.010" in by[1].note and "not part of the verdict" in by[1].note
    # every verdict carries the paper's sentence it tests
    assert all(c.quote.count('"') >= 2 for c in res)
    assert "selecting 3 as the norm bound" in by[5].quote and "variance 0.025" in by[6].quote
    # claim 2, unconstrained fixed-frequency: 0.30 ≤ 0.5 × 0.95
    assert (by[2].checks[0].value, by[2].checks[0].bound) == pytest.approx((0.30, 0.475))
    # claim 4: N = 10, 20, 30, 50 → 3 steps + the overall drop 0.90 − 0.60
    assert len(by[4].checks) == 4 and by[4].checks[-1].value == pytest.approx(0.30)
    # claim 5: M = 3 backdoor 0.05 ≤ 0.2, main drop 0.005 ≤ 0.01; extra: M = 10 0.80 ≥ 0.2
    assert [c.value for c in by[5].checks] == pytest.approx([0.05, 0.005])
    assert [(c.name, c.value) for c in by[5].extras] == [("m_high_not_mitigated", pytest.approx(0.80))]
    # claim 6: M = 5 alone 0.50 ≥ 0.2, 0.50 − 0.20 ≥ 0.05, main drop vs its baseline 0 ≤ 0.02
    assert [c.value for c in by[6].checks] == pytest.approx([0.50, 0.30, 0.0], abs=1e-12)
    # every check holds in both seeds (the jitter shifts paired cells alike)
    assert all(ch.seeds_ok == ch.seeds_n == 2 for c in res for ch in c.checks + c.extras)


# (claim that must fail, cell to change, new backdoor acc or None, new main acc or None)
FAILURES = [
    (2, "mr_lo_ff", 0.60, None),   # 0.60 > 0.5 × 0.95
    (3, "pgd_hi_rs", 0.90, None),  # fixed 0.80 < random 0.90 − 0.05
    (4, "pgd_n50", 0.85, None),    # N = 50 rises above N = 30 (0.80) + 0.02
    (5, "pgd_m3", 0.40, None),     # M = 3 does not mitigate: 0.40 > 0.2
    (6, "pgd_m5_dp", 0.48, None),  # noise gains only 0.02 < 0.05
    (6, "pgd_m5_dp", None, 0.92),  # the noise costs the main task 0.95 − 0.92 = 0.03 > 0.02
    (6, "pgd_m5", 0.19, None),     # M = 5 alone mitigates (0.19 < 0.2), against the paper's premise
]


def test_claim1_fails_on_its_backdoor_and_not_on_the_main_task(tmp_path, cells_writer, paper_cell_table):
    """Claim 1's verdict is the fixed-frequency backdoor only: a 5-point main-task loss fails
    the extra check `main_intact`, not the verdict; a backdoor below high_backdoor fails it
    (both schedules lowered to 0.79 so that claim 3 still holds: 0.79 ≥ 0.79 − 0.05)."""
    cells = paper_cell_table()
    ov, bd, _ = cells["mr_hi_ff"]
    cells["mr_hi_ff"] = (ov, bd, 0.90)
    res = check_claims(load_sweeps([str(cells_writer(tmp_path / "a", cells))]))
    assert _verdicts(res) == {i: PASS for i in range(1, 7)}
    intact = [ch for ch in res[0].extras if ch.name == "main_intact"]
    assert not intact[0].ok and intact[0].value == pytest.approx(0.05) and intact[1].ok
    for name in ("mr_hi_ff", "mr_hi_rs"):
        ov, _, m = cells[name]
        cells[name] = (ov, 0.79, m)
    res = check_claims(load_sweeps([str(cells_writer(tmp_path / "b", cells))]))
    assert _verdicts(res) == {**{i: PASS for i in range(1, 7)}, 1: FAIL}
    assert_verdicts_follow_from_numbers(res)


@pytest.mark.parametrize("claim,cell,bd,main", FAILURES)
def test_one_number_past_its_threshold_fails_exactly_that_claim(
        tmp_path, cells_writer, paper_cell_table, claim, cell, bd, main):
    cells = paper_cell_table()
    ov, b, m = cells[cell]
    cells[cell] = (ov, b if bd is None else bd, m if main is None else main)
    root = cells_writer(tmp_path / "p", cells)
    res = check_claims(load_sweeps([str(root)]))
    expected = {i: PASS for i in range(1, 7)}
    expected[claim] = FAIL
    assert _verdicts(res) == expected
    assert_verdicts_follow_from_numbers(res)


def test_missing_cells_give_na_and_say_what_is_missing(tmp_path, cells_writer, paper_cell_table):
    cells = {k: v for k, v in paper_cell_table().items()
             if k == "baseline" or k.startswith("mr_")}
    res = check_claims(load_sweeps([str(cells_writer(tmp_path / "p", cells))]))
    v = _verdicts(res)
    assert (v[1], v[2], v[3]) == (PASS, PASS, PASS)
    assert (v[4], v[5], v[6]) == (NA, NA, NA)
    assert "fig3" in res[3].note
    # claim 5 names what is missing: both PGD cells and the unattacked M = 3 baseline (the
    # loaded baseline is unclipped: not like-for-like)
    assert "PGD M=3" in res[4].note and "unattacked M=3 baseline" in res[4].note
    assert_verdicts_follow_from_numbers(res)


def test_claim1_without_baseline_uses_the_absolute_floor(tmp_path, cells_writer, paper_cell_table):
    cells = {k: v for k, v in paper_cell_table().items() if k.startswith("mr_hi")}
    data = load_sweeps([str(cells_writer(tmp_path / "p", cells))])
    res = check_claims(data)
    assert res[0].verdict == PASS
    intact = res[0].extras[1]
    assert intact.name == "main_intact" and "min_main_acc" in intact.text and intact.bound == 0.9 and intact.ok
    # raising the floor above the measured 0.94 fails the extra check, not the verdict
    res = check_claims(data, Thresholds(min_main_acc=0.95))
    assert res[0].verdict == PASS and not res[0].extras[1].ok
    assert check_claims(data)[4].verdict == NA  # claim 5 needs M=3, M=10 and the baseline


def test_thresholds_are_parameters(paper_sweep):
    data = load_sweeps([str(paper_sweep)])
    # claim 1: the ε = 3.3% fixed-frequency cell has 0.95; demanding 0.96 fails it, while
    # 0.93 fails only the random-sampling cell (0.92), an extra check
    assert check_claims(data, Thresholds(high_backdoor=0.96))[0].verdict == FAIL
    c1 = check_claims(data, Thresholds(high_backdoor=0.93))[0]
    assert c1.verdict == PASS and [ch.ok for ch in c1.extras if ch.name == "random_sampling_high"] == [False]
    # claim 6: the noise gains 0.30; demanding 0.31 fails it
    assert check_claims(data, Thresholds(further_min_gap=0.31))[5].verdict == FAIL
    # no cell has ε = 5%: claims 1 and 2 are N.A., claim 3 keeps its two ε = 0.33% pairs
    res = check_claims(data, Thresholds(eps_high=0.05))
    assert [c.verdict for c in res[:3]] == [NA, NA, PASS]
    assert len(res[2].checks) == 2 and all("0.33%" in ch.text for ch in res[2].checks)


def test_per_seed_counts_do_not_change_the_verdict(tmp_path, run_writer):
    """Claim 6 holds on the seed means (gap 0.06 ≥ 0.05) but in only one of two seeds."""
    base = {"attack.kind": "pgd", "attack.fraction": 0.033, "defense.norm_bound": 5.0}
    for seed, (plain, noisy) in enumerate([(0.5, 0.40), (0.5, 0.48)]):
        run_writer(tmp_path / "s" / f"p{seed}", base, seed, {"backdoor_acc": [plain] * 5, "main_acc": [0.9] * 5})
        run_writer(tmp_path / "s" / f"n{seed}", {**base, "defense.noise_sigma": 0.025}, seed,
                   {"backdoor_acc": [noisy] * 5, "main_acc": [0.9] * 5})
    c6 = check_claims(load_sweeps([str(tmp_path / "s")]))[5]
    assert c6.verdict == PASS
    ch = c6.checks[1]  # [0] is M = 5 alone not mitigating, [2] the main task (no baseline: the floor)
    assert ch.value == pytest.approx(0.06) and (ch.seeds_ok, ch.seeds_n) == (1, 2)


def test_make_check_and_verdict_rules():
    import pandas as pd

    lhs = pd.Series({0: 0.3, 1: 0.5, 2: float("nan")})
    ch = make_check("x", lhs, "<=", 0.45)
    assert ch.value == pytest.approx(0.4) and ch.bound == 0.45 and ch.ok
    assert (ch.seeds_ok, ch.seeds_n) == (1, 2)
    assert not holds(math.nan, ">=", 0.0) and not holds(1.0, "<=", math.nan)
    assert verdict_of([]) == NA
    good, bad = Check("a", 1, ">=", 0, 1, 1), Check("b", 1, "<=", 0, 0, 1)
    assert verdict_of([good]) == PASS and verdict_of([good, bad]) == FAIL
    with pytest.raises(ValueError):
        holds(1.0, "<", 2.0)


def test_threshold_overrides_are_validated():
    th = Thresholds.from_overrides({"high_backdoor": "0.7", "tasks": "10"})
    assert th.high_backdoor == 0.7 and th.tasks == 10 and th.sigma == 0.025
    for bad in ({"nope": "1"}, {"tail": "0"}, {"burn_in": "1"}, {"eps_low": "0.5"},
                {"high_backdoor": "high"}):
        with pytest.raises(ValueError):
            Thresholds.from_overrides(bad)


def test_claims_compare_with_the_like_for_like_baseline(tmp_path, cells_writer, paper_cell_table):
    """Claim 5's main-task check uses the UNATTACKED M = 3 cell (uniform mean, clipped), not
    the unclipped n_k-weighted baseline: here the unclipped one has 0.99, the clipped one
    0.95 and the attacked M = 3 cell 0.945, so like-for-like the drop is 0.005 (PASS), while
    against the unclipped baseline it would be 0.045 (FAIL). The clipping's own cost
    (0.99 − 0.95) is printed in the note, outside the verdict."""
    cells = paper_cell_table()
    ov, bd, _ = cells["baseline"]
    cells["baseline"] = (ov, bd, 0.99)
    res = check_claims(load_sweeps([str(cells_writer(tmp_path / "p", cells))]))
    c5 = res[4]
    assert c5.verdict == PASS and c5.checks[1].value == pytest.approx(0.005)
    base_m3 = "no attack, M=3, σ=0"  # cells are labelled by their varied keys
    assert f"[{base_m3}]" in c5.checks[1].text and base_m3 in c5.cells
    assert f"]: [{base_m3}] (unattacked, M = 3, uniform mean)" in c5.note and "+0.040" in c5.note
    # claim 1's unconstrained cells are unclipped and weighted: their baseline is unclipped
    c1 = res[0]
    mains = [ch.text for ch in c1.extras if "main" in ch.text]
    assert len(mains) == 2 and all(ch.startswith("main (tail) of [no attack, M=off, σ=0] ") for ch in mains)
    assert "no clipping, weighted mean" in c1.note


def test_weighting_makes_a_different_baseline(tmp_path, cells_writer, paper_cell_table):
    """An unattacked M = 3 cell with n_k weighting is not the baseline of the attacked M = 3
    cell (uniform by `auto`): claim 5 is N.A. without a uniform one."""
    cells = paper_cell_table()
    ov, bd, m = cells.pop("baseline_m3")
    cells["baseline_m3_w"] = ({**ov, "defense.weighting": "weighted"}, bd, m)
    res = check_claims(load_sweeps([str(cells_writer(tmp_path / "p", cells))]))
    assert res[4].verdict == NA and "unattacked M=3 baseline" in res[4].note


def test_cells_that_differ_beyond_the_claims_axes_get_no_verdict(tmp_path, paper_sweep, cells_writer,
                                                                 paper_cell_table):
    """Both populations loaded together: every claim would have two candidate cells (one per
    data.min_examples), so every claim is N.A. and says why, instead of a verdict on
    whichever came first; each population alone still gets its verdicts."""
    other = {name: ({**ov, "data.min_examples": 40}, 0.1 if "mr_hi" in name else bd, main)
             for name, (ov, bd, main) in paper_cell_table().items()}
    pop = cells_writer(tmp_path / "population", other)
    res = check_claims(load_sweeps([str(paper_sweep), str(pop)]))
    assert _verdicts(res) == {i: NA for i in range(1, 7)}
    assert all("data.min_examples (data.min_examples: 0, 40)" in c.note and not c.checks for c in res)
    assert_verdicts_follow_from_numbers(res)
    alone = _verdicts(check_claims(load_sweeps([str(pop)])))
    assert alone[1] == FAIL and alone[6] == PASS  # claim 1's backdoor 0.1 < 0.8 there
