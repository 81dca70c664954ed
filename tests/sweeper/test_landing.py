"""The sweep's MLflow landing page on a real sqlite store (no Ray): the experiment's
description, named child runs created ahead of their trials and found again by the
trial's own lookup, and the parent's per-trial final metrics, table and description."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sweeper import landing, storage as st
from sweeper.grid import load_grid
from sweeper.tracking import ROLE, STATUS, Tracker, default_uri

GRID = """\
name: land
description: Landing page test — two defenses, two seeds.
base:
  data: {source: synthetic, num_writers: 8, examples_per_writer: 10}
  fl: {rounds: 4, clients_per_round: 4}
  attack: {kind: model-replacement, fraction: 0.25, num_tasks: 2}
grid:
  defense.norm_bound: [null, 0.3]
seeds: 2
resources: {executor: in-process, cpus_per_trial: 1}
"""


def test_trial_names_use_the_report_notation():
    keys = ["defense.norm_bound", "attack.kind", "seed"]
    assert landing.trial_name({"attack.kind": "none", "defense.norm_bound": 0.3, "seed": 1},
                              keys) == "no attack, M=0.3, seed=1"
    assert landing.trial_name({"attack.fraction": 0.033, "defense.norm_bound": None},
                              ["attack.fraction", "defense.norm_bound"]) == "ε=3.3%, M=off"
    assert landing.trial_name({"seed": 2}, ["seed"]) == "seed=2"
    assert landing.trial_name({}, []) == ""


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A sweep's store as `run_sweep` leaves it before Tune starts, then each trial's run
    re-opened by the trial's own lookup, logged to and finished."""
    tmp = tmp_path_factory.mktemp("landing")
    (tmp / "grid.yaml").write_text(GRID)
    grid = load_grid(tmp / "grid.yaml")
    sweep_dir = tmp / "land"
    tr = Tracker(default_uri(sweep_dir))
    tr.init_store()
    exp = tr.experiment(grid.experiment, (sweep_dir / "artifacts").as_uri())
    parent = tr.start_parent(exp, "land", grid.spec.description)
    landing.describe_experiment(tr, exp, "land", grid.spec.description)
    created = landing.create_children(tr, exp, parent, "land", grid.trials, grid.varied_keys)
    before = {rid: tr.get_run(rid) for rid in created.values()}
    # what a trial does (sweeper/trainable.py): find its run by tag, re-open, log, finish
    for t in grid.trials:
        rid = tr.get_or_create_child(exp, parent, "land", t.trial_key, f"trial-{t.index:04d}", {})
        assert rid == created[t.trial_key]
        for r in range(1, 5):
            tr.log_metrics(rid, {"main_acc": 0.5 + 0.1 * t.index + 0.01 * r,
                                 "backdoor_acc": 0.05 * t.index, "round": r}, step=r)
        tr.finish(rid, "finished")
    manifest = {"name": "land", "tracking_uri": tr.uri, "experiment_id": exp,
                "parent_run_id": parent, "description": grid.spec.description,
                "varied_keys": list(grid.varied_keys),
                "trials": [{"index": t.index, "trial_key": t.trial_key, "rounds": 4,
                            "overrides": t.overrides} for t in grid.trials]}
    st.write_json(sweep_dir / st.MANIFEST, manifest)
    said: list[str] = []
    landing.summarise(tr, manifest, sweep_dir, said.append)
    return {"tr": tr, "grid": grid, "exp": exp, "parent": parent, "created": created,
            "before": before, "said": said, "dir": sweep_dir}


def test_children_exist_named_and_pending_before_their_trials_start(swept):
    grid, before = swept["grid"], swept["before"]
    names = {r.info.run_name for r in before.values()}
    assert names == {"M=off, seed=0", "M=off, seed=1", "M=0.3, seed=0", "M=0.3, seed=1"}
    for r in before.values():
        assert r.info.status == "SCHEDULED" and r.data.tags[STATUS] == "pending"
        assert r.data.tags[ROLE] == "trial" and r.data.params["fl.rounds"] == "4"
    assert len(swept["created"]) == len(grid.trials)
    # re-opened by the trial: the same runs, now finished, names kept
    kids = swept["tr"].child_runs(swept["exp"], swept["parent"])
    assert {r.info.run_id for r in kids} == set(before)
    assert {r.info.run_name for r in kids} == names
    assert {r.info.status for r in kids} == {"FINISHED"}


def test_experiment_and_parent_describe_the_sweep(swept):
    client = swept["tr"].client
    exp = client.get_experiment(swept["exp"])
    assert exp.tags[landing.NOTE].startswith("Landing page test — two defenses, two seeds.")
    assert "child runs of its parent run `land`" in exp.tags[landing.NOTE]
    note = client.get_run(swept["parent"]).data.tags[landing.NOTE]
    assert note.startswith("Landing page test")
    # the trial table in the description: one row per trial, with its final main_acc
    rows = [line for line in note.splitlines() if line.startswith("| ") and "seed=" in line]
    assert len(rows) == 4
    # trial index 3 (the last): main_acc = 0.5 + 0.3 + 0.04
    assert any("0.840" in r for r in rows)


def test_parent_carries_each_trials_final_metrics_and_table(swept, tmp_path):
    tr, grid = swept["tr"], swept["grid"]
    m = tr.get_run(swept["parent"]).data.metrics
    for t in grid.trials:
        name = landing.trial_name(t.overrides, grid.varied_keys)
        # the last logged value of each trial (step 4): 0.5 + 0.1·index + 0.04
        assert m[landing.metric_key("main_acc", name)] == pytest.approx(0.54 + 0.1 * t.index, abs=1e-12)
        assert m[landing.metric_key("backdoor_acc", name)] == pytest.approx(0.05 * t.index, abs=1e-12)
    assert landing.metric_key("main_acc", "no attack, M=0.3, seed=1") == \
        "final.main_acc/no attack M:0.3 seed:1"
    path = tr.client.download_artifacts(swept["parent"], "trials_final.json", str(tmp_path))
    table = json.loads(Path(path).read_text())
    assert table["columns"][:2] == ["#", "trial"] and "main_acc" in table["columns"]
    assert len(table["data"]) == len(grid.trials)
    assert "collateral_rate" not in table["columns"]  # not logged by this sweep: left out
