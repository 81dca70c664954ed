"""The statistics behind the report: cumulative mean, per-run and per-cell summaries.
Expected values are worked by hand in each test."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sweeper.report.load import load_sweeps
from sweeper.report.stats import cell_curves, cell_summary, cumulative_mean, run_curves, run_summary


def test_cumulative_mean_golden():
    # [1, 0, 1, 0] → 1/1, 1/2, 2/3, 2/4
    np.testing.assert_allclose(cumulative_mean([1, 0, 1, 0]), [1.0, 0.5, 2 / 3, 0.5])


def test_cumulative_mean_starts_late_and_skips_nan():
    out = cumulative_mean([1.0, 1.0, 0.0, 1.0], start=2)
    assert math.isnan(out[0]) and math.isnan(out[1])
    np.testing.assert_allclose(out[2:], [0.0, 0.5])
    # a missing value (NaN) is skipped, not counted as 0: [1, nan, 0] → 1, 1, 1/2
    np.testing.assert_allclose(cumulative_mean([1.0, np.nan, 0.0]), [1.0, 1.0, 0.5])
    assert np.isnan(cumulative_mean([1.0, 2.0], start=5)).all()


def _one_run(tmp_path, run_writer, overrides=None, **curves):
    run_writer(tmp_path / "r", overrides or {"attack.kind": "model-replacement",
                                             "attack.fraction": 0.033}, 0, curves)
    return load_sweeps([str(tmp_path / "r")])


def test_run_summary_numbers(tmp_path, run_writer):
    # 8 rounds; backdoor attacked twice at the start: avg = 2/8; main tail (10% of 8 → 1
    # round) = last value; with tail 0.25 → mean of the last 2.
    data = _one_run(tmp_path, run_writer,
                    backdoor_acc=[1, 1, 0, 0, 0, 0, 0, 0],
                    main_acc=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.9],
                    num_attackers=[1, 1, 0, 0, 0, 0, 0, 0])
    s = run_summary(data).iloc[0]
    assert s["backdoor_avg"] == pytest.approx(0.25)
    assert s["backdoor_final"] == 0.0
    assert s["main_final"] == pytest.approx(0.9)
    assert s["main_tail"] == pytest.approx(0.9)
    assert s["attacked_rounds"] == pytest.approx(0.25)
    assert run_summary(data, tail=0.25).iloc[0]["main_tail"] == pytest.approx(0.8)
    # burn-in 0.25 drops the first 2 of 8 rounds: the two attacked ones → 0
    assert run_summary(data, burn_in=0.25).iloc[0]["backdoor_avg"] == pytest.approx(0.0)
    # burn-in 0 is exactly the last value of the cumulative mean (the paper's green line)
    curves = run_curves(data)
    assert s["backdoor_avg"] == pytest.approx(curves["backdoor_cummean"].iloc[-1])
    with pytest.raises(ValueError):
        run_summary(data, tail=0.0)
    with pytest.raises(ValueError):
        run_summary(data, burn_in=1.0)


def test_attack_start_round_starts_the_cumulative_mean(tmp_path, run_writer):
    # start_round 4 (0-based) → round r (= rounds completed) counts from r = 5 on
    data = _one_run(tmp_path, run_writer,
                    {"attack.kind": "model-replacement", "attack.fraction": 0.033,
                     "attack.start_round": 4},
                    backdoor_acc=[1, 1, 1, 1, 0.5, 0.0, 0.5, 0.0],
                    main_acc=[0.5] * 8)
    cm = run_curves(data)["backdoor_cummean"].to_numpy()
    assert np.isnan(cm[:4]).all()
    np.testing.assert_allclose(cm[4:], [0.5, 0.25, 1 / 3, 0.25])
    assert run_summary(data).iloc[0]["backdoor_avg"] == pytest.approx(0.25)


def test_cell_summary_mean_min_max_over_seeds(tmp_path, run_writer):
    for seed, bd in ((0, 0.2), (1, 0.4), (2, 0.9)):
        run_writer(tmp_path / "s" / f"seed{seed}", {"attack.kind": "pgd", "attack.fraction": 0.033,
                                                    "defense.norm_bound": 5.0}, seed,
                   {"backdoor_acc": [bd] * 4, "main_acc": [0.9] * 4})
    data = load_sweeps([str(tmp_path / "s")])
    row = cell_summary(data).iloc[0]
    assert row["seeds"] == 3
    assert row["backdoor_avg"] == pytest.approx(0.5)
    assert (row["backdoor_avg_min"], row["backdoor_avg_max"]) == pytest.approx((0.2, 0.9))
    curve = cell_curves(data, "backdoor_acc")[row["cell"]]
    assert list(curve["n"]) == [3] * 4
    assert curve["mean"].iloc[0] == pytest.approx(0.5)
    assert (curve["min"].iloc[0], curve["max"].iloc[0]) == pytest.approx((0.2, 0.9))


def test_backdoor_lifespan_golden():
    """Attack in rounds 2..5 (0-based; stop_round 6): evaluated rounds r = 1..10 (r − 1 ran).
    Peak in the window (r = 3..6) is 0.8, half is 0.4; after the stop (r ≥ 7) the first value
    below 0.4 is at r = 9: lifespan 9 − 6 = 3."""
    from sweeper.report.stats import backdoor_lifespan

    r = np.arange(1, 11)
    b = np.array([0.0, 0.0, 0.5, 0.8, 0.6, 0.7, 0.6, 0.45, 0.3, 0.1])
    assert backdoor_lifespan(r, b, 2, 6) == (3.0, False)
    # 0.4 exactly is not below half the peak: the next value decides
    b2 = b.copy(); b2[8] = 0.4
    assert backdoor_lifespan(r, b2, 2, 6) == (4.0, False)
    # never falls: a lower bound (last round − stop) and censored
    assert backdoor_lifespan(r, np.full(10, 0.9), 2, 6) == (4.0, True)
    # no stop round, or nothing evaluated after it: NaN
    assert math.isnan(backdoor_lifespan(r, b, 2, None)[0])
    assert math.isnan(backdoor_lifespan(r, b, 2, 10)[0])
    # a peak below LIFESPAN_MIN_PEAK (0.2): nothing implanted, nothing to outlive
    low = np.array([0.0, 0.0, 0.01, 0.19, 0.02, 0.0, 0.01, 0.01, 0.0, 0.0])
    assert math.isnan(backdoor_lifespan(r, low, 2, 6)[0])
    assert backdoor_lifespan(r, np.where(low == 0.19, 0.2, low), 2, 6) == (1.0, False)  # peak 0.2, 0.01 < 0.1 at r = 7


def test_lifespan_reaches_the_run_summary_and_the_table(tmp_path, run_writer):
    """stop_round read back from the run's config: attack in rounds 0..3, peak 1.0, first
    value < 0.5 at r = 7 → lifespan 3; the table marks nothing as censored."""
    from sweeper.report.page import TABLE_COLUMNS, table_rows

    data = _one_run(tmp_path, run_writer,
                    {"attack.kind": "model-replacement", "attack.fraction": 0.033, "attack.stop_round": 4},
                    backdoor_acc=[1, 1, 1, 1, 0.9, 0.6, 0.2, 0.1],
                    main_acc=[0.5] * 8)
    s = run_summary(data).iloc[0]
    assert (s["lifespan"], s["lifespan_censored"]) == (3.0, 0.0)
    cells = cell_summary(data)
    row = table_rows(cells, [])[0]
    assert row[3 + [c for c, _ in TABLE_COLUMNS].index("lifespan")] == "3.0"


def test_an_unattacked_run_has_no_lifespan(tmp_path, run_writer):
    """The same curve without an attack: nothing was implanted, so no lifespan (NaN, "–")."""
    data = _one_run(tmp_path, run_writer, {"attack.kind": "none", "attack.stop_round": 4},
                    backdoor_acc=[1, 1, 1, 1, 0.9, 0.6, 0.2, 0.1], main_acc=[0.5] * 8)
    s = run_summary(data).iloc[0]
    assert math.isnan(s["lifespan"]) and s["lifespan_censored"] == 0.0


def test_flag_rates_reach_the_run_summary_and_the_table(tmp_path, run_writer):
    """flag_tpr is logged only in rounds with an attacker (None elsewhere), flag_fpr every
    round: TPR = mean(1, 0) = 0.5 over the 2 attacked rounds, FPR = mean(0, 0.1, 0, 0.2)
    = 0.075; a run of an aggregator that flags nobody has neither ("–")."""
    from sweeper.report.page import TABLE_COLUMNS, table_rows

    data = _one_run(tmp_path, run_writer,
                    {"attack.kind": "model-replacement", "attack.fraction": 0.033, "defense.aggregator": "krum"},
                    backdoor_acc=[0.0] * 4, main_acc=[0.5] * 4, num_attackers=[1, 0, 1, 0],
                    flag_tpr=[1.0, None, 0.0, None], flag_fpr=[0.0, 0.1, 0.0, 0.2])
    s = run_summary(data).iloc[0]
    assert s["flag_tpr_avg"] == pytest.approx(0.5) and s["flag_fpr_avg"] == pytest.approx(0.075)
    names = [c for c, _ in TABLE_COLUMNS]
    row = table_rows(cell_summary(data), [])[0]
    assert (row[3 + names.index("flag_tpr_avg")], row[3 + names.index("flag_fpr_avg")]) == ("0.500", "0.075")
    plain = _one_run(tmp_path / "fedavg", run_writer, backdoor_acc=[0.0] * 4, main_acc=[0.5] * 4)
    row = table_rows(cell_summary(plain), [])[0]
    assert row[3 + names.index("flag_tpr_avg")] == "–" and math.isnan(run_summary(plain).iloc[0]["flag_fpr_avg"])
