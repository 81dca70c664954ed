"""The grid section `plugin_params` (sweeper/plugin_params.py): a plug-in's settings reach
exactly the trials that choose it; the trial's own settings win; bad entries are refused
naming the section's key."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from fl_core.config import config_hash, parse_config
from sweeper.errors import GridError
from sweeper.grid import load_grid

BASE = """\
name: zoo
base:
  data: {source: synthetic, num_writers: 12}
  fl: {rounds: 2, clients_per_round: 4}
  attack: {kind: pgd, fraction: 0.1, num_tasks: 3, backdoor: trigger}
  defense: {norm_bound: 5}
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "grid.yaml"
    p.write_text(BASE + textwrap.dedent(text))
    return p


def test_params_reach_only_the_trials_that_choose_the_plugin(tmp_path):
    g = load_grid(write(tmp_path, """\
        grid:
          attack.kind: [pgd, neurotoxin]
          defense.aggregator: [fedavg, krum, trimmed-mean]
        plugin_params:
          attack: {neurotoxin: {top_k: 0.05}}
          aggregator: {krum: {f: 1}, trimmed-mean: {beta: 0.25}}
        """))
    assert len(g.trials) == 6
    for t in g.trials:
        a, d = t.config.attack, t.config.defense
        if a.kind == "neurotoxin":
            assert a.params["top_k"] == 0.05
        else:
            assert "top_k" not in a.params
        want = {"fedavg": {}, "krum": {"f": 1}, "trimmed-mean": {"beta": 0.25}}[d.aggregator]
        assert {k: d.aggregator_params[k] for k in want} == want
        if d.aggregator == "fedavg":
            assert d.aggregator_params == {}
        # the trial is the same config as one written out by hand: same key
        by_hand = parse_config({
            "data": {"source": "synthetic", "num_writers": 12},
            "fl": {"rounds": 2, "clients_per_round": 4},
            "attack": {"kind": a.kind, "fraction": 0.1, "num_tasks": 3, "backdoor": "trigger",
                       **({"params": {"top_k": 0.05}} if a.kind == "neurotoxin" else {})},
            "defense": {"norm_bound": 5, "aggregator": d.aggregator, "aggregator_params": want}})
        assert t.trial_key == config_hash(by_hand)


def test_the_trials_own_setting_wins(tmp_path):
    g = load_grid(write(tmp_path, """\
        grid:
          defense.aggregator: [trimmed-mean]
          defense.aggregator_params.beta: [0.1, 0.2]
        plugin_params:
          aggregator: {trimmed-mean: {beta: 0.25}}
        """))
    assert [t.config.defense.aggregator_params["beta"] for t in g.trials] == [0.1, 0.2]


def test_preaggregation_steps_get_their_own(tmp_path):
    g = load_grid(write(tmp_path, """\
        grid:
          defense.preaggregation: [null, bucketing, nnm+bucketing]
        plugin_params:
          preaggregation: {bucketing: {s: 3}}
        """))
    got = [(t.config.defense.preaggregation, t.config.defense.preaggregation_params.get("bucketing", {}).get("s"))
           for t in g.trials]
    assert got == [(None, None), ("bucketing", 3), ("nnm+bucketing", 3)]


BAD = {
    "unknown-family": ("plugin_params: {aggregators: {krum: {f: 1}}}\n",
                       "`plugin_params.aggregators`", "did you mean `aggregator`?"),
    "unknown-plugin": ("plugin_params: {aggregator: {krumm: {f: 1}}}\n",
                       "`plugin_params.aggregator.krumm`", "did you mean `krum`?"),
    "unused-plugin": ("plugin_params: {aggregator: {krum: {f: 1}}}\n",
                      "`plugin_params.aggregator.krum`", "no trial of the grid uses the aggregator 'krum'"),
    "bad-value": ("grid: {defense.aggregator: [fedavg, krum]}\nplugin_params: {aggregator: {krum: {f: -1}}}\n",
                  "`plugin_params.aggregator.krum.f`", "invalid value -1"),
    "misspelt-param": ("grid: {defense.aggregator: [fedavg, krum]}\nplugin_params: {aggregator: {krum: {ff: 1}}}\n",
                       "`plugin_params.aggregator.krum.ff`", "did you mean `f`?"),
    "not-a-mapping": ("grid: {defense.aggregator: [krum]}\nplugin_params: {aggregator: {krum: 3}}\n",
                      "`plugin_params.aggregator.krum`", "invalid value 3"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_section_is_refused_naming_its_key(tmp_path, case):
    text, key, phrase = BAD[case]
    p = write(tmp_path, ("seeds: 1\n" if "grid:" not in text else "") + text)
    with pytest.raises(GridError) as ei:
        load_grid(p)
    msg = str(ei.value)
    assert msg.startswith(f"{p}: {key}:"), msg
    assert phrase in msg, msg
    assert sorted(os.listdir(tmp_path)) == ["grid.yaml"]


def test_without_the_section_a_varied_plugin_cannot_take_params_in_base(tmp_path):
    """The problem the section solves: base params of one aggregator break the others."""
    p = tmp_path / "grid.yaml"
    p.write_text(BASE.replace("defense: {norm_bound: 5}", "defense: {norm_bound: 5, aggregator_params: {f: 1}}")
                 + "grid: {defense.aggregator: [fedavg, krum]}\n")
    with pytest.raises(GridError, match="plugin_params"):
        load_grid(p)
