"""The report's "Attacker pool" section and pool.csv (issue 25): each attacked cell's pool
per seed beside its population, the numbers the engine's own draw gives; unattacked cells
have none; a cell whose data cannot be read here is named in a note."""

from __future__ import annotations

import pandas as pd

from fl_core.pool_profile import pool_profile
from fl_core.config import parse_config
from fl_core.data import describe_data
from sweeper.report.load import load_sweeps
from sweeper.report.pool import pool_report
from tests.sweeper.report.conftest import write_run

CURVES = {"main_acc": [0.8, 0.8, 0.8], "backdoor_acc": [0.1, 0.1, 0.1]}


def _runs(tmp_path, rule: str):
    for seed in (0, 1):
        write_run(tmp_path / "sw" / f"pgd-{seed}", {
            "data.max_writers": 80, "attack.kind": "pgd", "attack.fraction": 0.1,
            "attack.pool_rule": rule, "attack.num_tasks": 5, "defense.norm_bound": 3.0}, seed, CURVES)
    write_run(tmp_path / "sw" / "clean-0", {"data.max_writers": 80, "attack.kind": "none"}, 0, CURVES)
    return load_sweeps([str(tmp_path / "sw")])


def test_pool_rows_are_the_engines_pool_per_attacked_cell_and_seed(tmp_path):
    data = _runs(tmp_path, "legacy-eligible")
    rows, notes = pool_report(data)
    assert notes == []
    assert [(r.seed, r.pool_rule) for r in rows] == [(0, "legacy-eligible"), (1, "legacy-eligible")]
    for r in rows:
        cfg = parse_config({"seed": r.seed, "data": {"source": "embedded", "max_writers": 80},
                            "attack": {"kind": "pgd", "fraction": 0.1, "num_tasks": 5, "pool_rule": "legacy-eligible"},
                            "defense": {"norm_bound": 3.0}})
        want = pool_profile(cfg, describe_data(cfg.data).labels)
        assert (r.pool, r.population) == (want.pool, want.population)
        assert r.pool.writers == 8 and r.population.writers == 80


def test_the_page_and_pool_csv_show_it(tmp_path):
    from sweeper.report.page import build_report

    data = _runs(tmp_path, "unbiased")
    out = tmp_path / "rep"
    rep = build_report(data, out)
    text = (out / "report.md").read_text()
    section = text.split("## Attacker pool", 1)[1]
    row = rep.pool[0]
    assert "population: 80 writers" in section and "seed 0: pool of 8 writers" in section
    assert f"{row.pool.min} / {row.pool.median:g} / {row.pool.max} images" in section
    csv = pd.read_csv(out / "pool.csv")
    assert list(csv["seed"]) == [0, 1] and set(csv["pool_rule"]) == {"unbiased"}
    assert (csv["population_writers"] == 80).all() and (csv["pool_writers"] == 8).all()


def test_a_cell_whose_data_is_not_here_gets_a_note(tmp_path):
    write_run(tmp_path / "sw" / "pgd-0", {"attack.kind": "pgd", "attack.fraction": 0.1,
                                         "defense.norm_bound": 3.0}, 0, CURVES)
    cfg = tmp_path / "sw" / "pgd-0" / "config.yaml"
    cfg.write_text(cfg.read_text().replace("source: embedded", "source: tff-h5")
                   .replace("path: null", f"path: {tmp_path / 'nowhere'}"))
    rows, notes = pool_report(load_sweeps([str(tmp_path / "sw")]))
    assert rows == [] and len(notes) == 1 and "cannot be read here" in notes[0]
