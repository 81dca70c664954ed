"""Cells that differ by `defense.aggregator` are labelled by the aggregator registry's own
text (fl_core/aggregators/), one part for the name and its parameters."""

from __future__ import annotations

from sweeper.report.load import load_sweeps


def test_aggregator_cells_carry_the_registry_label(tmp_path, run_writer):
    curves = {"main_acc": [0.9] * 2, "backdoor_acc": [0.1] * 2}
    runs = {
        "fedavg": {},
        "krum3": {"defense.aggregator": "krum", "defense.aggregator_params.f": 3},
        "krum": {"defense.aggregator": "krum"},
        "trim": {"defense.aggregator": "trimmed-mean", "defense.aggregator_params.beta": 0.2},
        "fg": {"defense.aggregator": "foolsgold"},
    }
    for name, over in runs.items():
        run_writer(tmp_path / "s" / name, {"attack.kind": "model-replacement", "attack.fraction": 0.033, **over},
                   0, curves)
    data = load_sweeps([str(tmp_path / "s")])
    assert "defense.aggregator" in data.cell_keys
    # FedAvg first, then the others by name; no `defense.aggregator_params.*` part of its own
    assert data.cells() == ["FedAvg", "FoolsGold", "Krum", "Krum f=3", "trimmed mean β=0.2"]


def test_a_params_only_sweep_is_labelled_by_the_aggregator_too(tmp_path, run_writer):
    curves = {"main_acc": [0.9] * 2, "backdoor_acc": [0.1] * 2}
    for f in (1, 4):
        run_writer(tmp_path / "s" / f"f{f}", {"defense.aggregator": "multi-krum",
                                              "defense.aggregator_params.f": f}, 0, curves)
    data = load_sweeps([str(tmp_path / "s")])
    assert sorted(data.cells()) == ["Multi-Krum f=1", "Multi-Krum f=4"]
