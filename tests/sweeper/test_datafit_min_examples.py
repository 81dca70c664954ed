"""The grid-fit check (`sweeper/datafit.py`) counts the writers after `data.min_examples`:
a grid whose N targets or cohort do not fit the filtered population fails at `validate`,
naming the key and the filter. Embedded writer counts (measured): 231 with ≥ 40 train
images, 10 with ≥ 200, none with ≥ 235 (the largest writer holds 234)."""

from __future__ import annotations

import textwrap

import pytest

from fl_core.config import parse_config
from fl_core.data import synthetic
from sweeper.datafit import check_data_fit, pool_rows
from sweeper.errors import GridError
from sweeper.grid import load_grid


def cfg(m: int, **attack):
    return parse_config({"data": {"min_examples": m},
                         "attack": {"kind": "model-replacement", "fraction": 0.033, "num_tasks": 30, **attack}})


def test_fits_at_40_and_the_pool_is_drawn_on_231_writers():
    c = cfg(40)
    check_data_fit("g.yaml", c, {})

    class T:  # the one attribute pool_rows reads
        config = c

    (row,), notes = pool_rows([T()])
    pop = row["population"]
    assert not notes and "≥ 40" in row["data"]
    assert (pop.writers, pop.min, pop.max, pop.without_source) == (231, 47, 234, 0.0)
    assert row["pool"].writers == round(0.033 * 231) == 8


def test_too_few_writers_after_the_filter_names_it():
    """At 200 only 10 writers remain: N = 30 targets do not fit (the full 439 would)."""
    check_data_fit("g.yaml", cfg(0), {})
    with pytest.raises(GridError) as e:
        check_data_fit("g.yaml", cfg(200), {"data.min_examples": 200})
    assert e.value.key == "base.attack.num_tasks"
    assert "K = 10 writers" in e.value.reason and "data.min_examples = 200" in e.value.reason


def test_cohort_larger_than_the_filtered_population():
    c = parse_config({"data": {"min_examples": 220}, "fl": {"clients_per_round": 30}, "attack": {"num_tasks": 5}})
    with pytest.raises(GridError) as e:
        check_data_fit("g.yaml", c, {})
    assert e.value.key == "base.fl.clients_per_round" and "K = 6 writers" in e.value.reason


def test_no_writer_left_and_lazy_populations_are_grid_errors_at_the_key(monkeypatch):
    with pytest.raises(GridError) as e:
        check_data_fit("g.yaml", cfg(235), {"data.min_examples": 235})
    assert e.value.key == "grid.data.min_examples" and "at most 234" in e.value.reason
    monkeypatch.setattr(synthetic, "LAZY_ABOVE", 30)
    lazy = parse_config({"data": {"source": "synthetic", "num_writers": 33, "examples_per_writer": 6,
                                  "min_examples": 5}})
    with pytest.raises(GridError) as e:
        check_data_fit("g.yaml", lazy, {})
    assert e.value.key == "base.data.min_examples" and "lazy" in e.value.reason


def test_a_grid_file_fails_validation_before_anything_runs(tmp_path):
    grid = tmp_path / "g.yaml"
    grid.write_text(textwrap.dedent("""\
        name: min-examples-check
        base:
          data: {source: embedded, min_examples: 200}
          fl: {rounds: 2, clients_per_round: 5}
          attack: {kind: model-replacement, fraction: 0.1}
        grid:
          attack.num_tasks: [5, 30]
        seeds: 1
        """))
    with pytest.raises(GridError) as e:
        load_grid(grid)
    assert e.value.key == "grid.attack.num_tasks" and "data.min_examples = 200" in e.value.reason
