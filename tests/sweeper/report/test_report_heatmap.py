"""The defense × attack heatmap (issue 12's comparison grids): which value lands in which
square, NaN for a missing cell, and that the report draws it only when both the attack and
the aggregator vary."""

from __future__ import annotations

import math

from sweeper.report.figures import heatmap_matrix, wants_heatmap
from sweeper.report.load import load_sweeps
from sweeper.report.page import build_report
from sweeper.report.stats import cell_summary

ATTACKS = {"model-replacement": 0.9, "neurotoxin": 0.6}
AGGS = {"fedavg": 0.0, "median": -0.5}  # median lowers the backdoor by 0.5


def _write(tmp_path, run_writer, skip=()):
    for agg, d in AGGS.items():
        for kind, b in ATTACKS.items():
            if (agg, kind) in skip:
                continue
            run_writer(tmp_path / "s" / f"{agg}-{kind}",
                       {"attack.kind": kind, "attack.fraction": 0.033, "defense.norm_bound": 3.0,
                        "defense.aggregator": agg},
                       0, {"main_acc": [0.8 + (0.1 if agg == "median" else 0.0)] * 4,
                           "backdoor_acc": [b + d] * 4})
    return load_sweeps([str(tmp_path / "s")])


def test_heatmap_puts_each_cell_mean_in_its_square(tmp_path, run_writer):
    data = _write(tmp_path, run_writer)
    assert wants_heatmap(data)
    cells = cell_summary(data)
    rows, cols, bd = heatmap_matrix(data, cells, "backdoor_avg")
    assert rows == ["FedAvg", "median"] and cols == ["unconstrained", "Neurotoxin"]
    # constant curves: backdoor (avg) = the constant, rows × columns as designed
    assert bd.round(6).tolist() == [[0.9, 0.6], [0.4, 0.1]]
    _, _, main = heatmap_matrix(data, cells, "main_tail")
    assert main.round(6).tolist() == [[0.8, 0.8], [0.9, 0.9]]


def test_a_missing_cell_is_nan_and_the_report_draws_the_figure(tmp_path, run_writer):
    data = _write(tmp_path, run_writer, skip={("median", "neurotoxin")})
    rows, cols, bd = heatmap_matrix(data, cell_summary(data), "backdoor_avg")
    assert math.isnan(bd[1, 1]) and bd[1, 0] == 0.4
    rep = build_report(data, tmp_path / "rep")
    png = tmp_path / "rep" / "figures" / "heatmap.png"
    assert png in rep.files and png.stat().st_size > 10_000
    assert "heatmap" in (tmp_path / "rep" / "report.md").read_text()


def test_no_heatmap_when_only_the_attack_varies(tmp_path, run_writer):
    for kind in ATTACKS:
        run_writer(tmp_path / "s" / kind, {"attack.kind": kind, "attack.fraction": 0.033}, 0,
                   {"main_acc": [0.9] * 2, "backdoor_acc": [0.5] * 2})
    data = load_sweeps([str(tmp_path / "s")])
    assert not wants_heatmap(data)
    build_report(data, tmp_path / "rep")
    assert not (tmp_path / "rep" / "figures" / "heatmap.png").exists()


def test_an_attack_parameter_labels_only_the_cells_it_applies_to(tmp_path, run_writer):
    """Neurotoxin's top_k at its default in every Neurotoxin cell tells no two cells apart: not
    in the labels (nor in "Varied keys"). Once two Neurotoxin cells differ in it, it labels
    them, and only them."""
    data = _write(tmp_path, run_writer)
    assert data.cells() == ["unconstrained, FedAvg", "unconstrained, median",
                            "Neurotoxin, FedAvg", "Neurotoxin, median"]
    assert not any(k.startswith("attack.params.") for k in data.cell_keys)
    run_writer(tmp_path / "s" / "fedavg-neurotoxin-5", {"attack.kind": "neurotoxin", "attack.fraction": 0.033,
               "defense.norm_bound": 3.0, "attack.params.top_k": 0.05}, 0,
               {"main_acc": [0.8] * 4, "backdoor_acc": [0.5] * 4})
    data = load_sweeps([str(tmp_path / "s")])
    assert data.cells() == ["unconstrained, FedAvg", "unconstrained, median",
                            "Neurotoxin, top_k=0.01, FedAvg", "Neurotoxin, top_k=0.01, median",
                            "Neurotoxin, top_k=0.05, FedAvg"]


def test_untargeted_attacks_show_the_main_accuracy_drop_against_the_unattacked_cell(tmp_path, run_writer):
    """Issue 21 item 5: an untargeted attack's measure is main (tail) of the cell with
    attack.kind none and the same defense, minus its own; the EFFECT panel shows it for
    the untargeted column and backdoor (avg) for the backdoor one. Constant curves make
    every tail mean the constant, so the drops are exact differences of the constants
    (to float64 rounding: 1e-12)."""
    from fl_core.attacks import ATTACKS
    from fl_core.attacks.base import AttackSpec
    from sweeper.report.figures import EFFECT

    ATTACKS.register(AttackSpec("test-untargeted", "test untargeted", lambda p, c: None, goal="untargeted"))
    try:
        main = {("fedavg", "none"): 0.9, ("fedavg", "test-untargeted"): 0.6, ("fedavg", "model-replacement"): 0.85,
                ("median", "none"): 0.88, ("median", "test-untargeted"): 0.78, ("median", "model-replacement"): 0.87}
        for (agg, kind), acc in main.items():
            run_writer(tmp_path / "s" / f"{agg}-{kind}",
                       {"attack.kind": kind, "attack.fraction": 0.1, "defense.aggregator": agg}, 0,
                       {"main_acc": [acc] * 4, "backdoor_acc": [0.7 if kind == "model-replacement" else 0.05] * 4})
        data = load_sweeps([str(tmp_path / "s")])
        cells = cell_summary(data).set_index("cell")
        drops = {c: cells.loc[c, "main_drop"] for c in cells.index}
        assert [c for c in drops if c.startswith("no attack")] == ["no attack, FedAvg", "no attack, median"]
        assert all(abs(v) < 1e-12 for c, v in drops.items() if c.startswith("no attack"))
        rows, cols, eff = heatmap_matrix(data, cells.reset_index(), EFFECT)
        assert rows == ["FedAvg", "median"]
        assert cols == ["unconstrained", "test untargeted (drop)"]
        assert abs(eff[0, 1] - 0.3) < 1e-12 and abs(eff[1, 1] - 0.1) < 1e-12  # main drops
        assert abs(eff[0, 0] - 0.7) < 1e-12 and abs(eff[1, 0] - 0.7) < 1e-12  # backdoor (avg)
        rep = build_report(data, tmp_path / "rep")
        assert "main acc drop vs no attack" in (tmp_path / "rep" / "report.md").read_text()
        assert (tmp_path / "rep" / "figures" / "heatmap.png") in rep.files
    finally:
        ATTACKS.unregister("test-untargeted")
