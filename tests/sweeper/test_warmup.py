"""Shared warm-ups (`warmup:` in a grid; sweeper/warmup.py): one clean model per seed,
cached under the storage root by its config hash, every trial of that seed continuing from
it; bit-identical whether computed in this sweep or reused by another."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fl_core.config import parse_config
from fl_core.simulate import Simulation
from fl_core.state import load_state
from sweeper.errors import GridError
from sweeper.grid import load_grid
from sweeper.warmup import WARMUP_DIR

REPO = Path(__file__).resolve().parents[2]
GRID = """\
name: {name}
base:
  data: {{source: synthetic, num_writers: 12, examples_per_writer: 20}}
  fl: {{rounds: 4, clients_per_round: 4, local_epochs: 1, checkpoint_every: 2}}
  attack: {{kind: model-replacement, fraction: 0.2, frequency: 1, num_tasks: 3, start_round: 2}}
grid:
  attack.kind: [none, model-replacement]
seeds: 2
warmup: {{rounds: 2{extra}}}
resources: {{executor: in-process, cpus_per_trial: 1}}
max_concurrent_trials: 2
"""


def write(tmp: Path, name: str = "w", extra: str = "", text: str | None = None) -> Path:
    p = tmp / f"{name}.yaml"
    p.write_text(text if text is not None else GRID.format(name=name, extra=extra))
    return p


def test_one_warmup_per_seed_named_in_every_trial(tmp_path):
    g = load_grid(write(tmp_path))
    assert len(g.trials) == 4 and len(g.warmups) == 2
    by_seed = {c.seed: k for k, c in g.warmups.items()}
    for t in g.trials:
        assert t.config.fl.init == f"{WARMUP_DIR}/{by_seed[t.config.seed]}"
    for c in g.warmups.values():  # clean, 2 rounds, the trials' data
        assert c.attack.kind == "none" and c.defense.norm_bound is None and c.fl.rounds == 2
        assert c.data == g.trials[0].config.data and c.attack.num_tasks == 3


def test_warmup_key_ignores_execution_keys_but_not_training_keys(tmp_path):
    a = load_grid(write(tmp_path, "a"))
    b = load_grid(write(tmp_path, "b", ", overrides: {fl.checkpoint_every: 1}"))
    c = load_grid(write(tmp_path, "c", ", overrides: {fl.local_epochs: 2}"))
    assert set(a.warmups) == set(b.warmups) and not set(a.warmups) & set(c.warmups)


@pytest.mark.parametrize("extra,key", [
    (", overrides: {attack.kind: pgd}", "warmup.overrides.attack.kind"),
    (", overrides: {data.max_writers: 5}", "warmup.overrides.data.max_writers"),
])
def test_bad_warmup_overrides_name_the_key(tmp_path, extra, key):
    with pytest.raises(GridError) as e:
        load_grid(write(tmp_path, extra=extra))
    assert e.value.key == key


def test_trials_must_run_past_the_warmup(tmp_path):
    text = GRID.format(name="w", extra="").replace("rounds: 2}", "rounds: 4}")
    with pytest.raises(GridError) as e:
        load_grid(write(tmp_path, text=text))
    assert e.value.key == "warmup.rounds" and "less than 4" in str(e.value)


def test_data_axis_conflicts_with_a_shared_warmup(tmp_path):
    text = GRID.format(name="w", extra="").replace("  attack.kind: [none, model-replacement]",
                                                   "  data.num_writers: [12, 14]")
    with pytest.raises(GridError) as e:
        load_grid(write(tmp_path, text=text))
    assert e.value.key == "grid.data.num_writers"


def _run(tmp: Path, grid: Path, name: str) -> str:
    cmd = [sys.executable, "-m", "sweeper", "run", str(grid), "--storage", str(tmp / "sweeps"),
           "--name", name, "--num-cpus", "2", "--object-store-mb", "150"]
    out = subprocess.run(cmd, cwd=tmp, env={**os.environ, "PYTHONPATH": str(REPO)},
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout + out.stderr


def _trial_metrics(sweep_dir: Path) -> dict[str, list]:
    """trial key → the metrics of its MLflow child run (round, main_acc, backdoor_acc)."""
    from sweeper.tracking import Tracker

    from sweeper.storage import read_manifest

    man = read_manifest(sweep_dir)
    tr = Tracker(man["tracking_uri"])
    out = {}
    for run in tr.child_runs(man["experiment_id"], man["parent_run_id"]):
        key = run.data.tags["fl_sweep.trial_key"]
        hist = tr.client.get_metric_history(run.info.run_id, "main_acc")
        bd = tr.client.get_metric_history(run.info.run_id, "backdoor_acc")
        out[key] = (sorted((m.step, m.value) for m in hist), sorted((m.step, m.value) for m in bd))
    return out


@pytest.mark.ray
@pytest.mark.slow
def test_sweeps_compute_then_reuse_the_warmup_bit_identically(tmp_path):
    grid = write(tmp_path, text=GRID.format(name="w", extra="").replace("seeds: 2", "seeds: 1"))
    first = _run(tmp_path, grid, "first")
    assert "warm-up: 1 to compute" in first
    (key,) = load_grid(grid).warmups
    wdir = tmp_path / "sweeps" / WARMUP_DIR / key
    assert json.loads((wdir / "status.json").read_text())["status"] == "finished"
    assert load_state(wdir / "state.pt").round_idx == 2

    second = _run(tmp_path, grid, "second")
    assert "all 1 reused" in second
    a, b = _trial_metrics(tmp_path / "sweeps" / "first"), _trial_metrics(tmp_path / "sweeps" / "second")
    trials = {k: v for k, v in a.items() if not k.startswith("warmup-")}
    assert len(trials) == 2 and a == b  # same trial keys, same metrics, bit for bit
    assert f"warmup-{key}" in a and [s for s, _ in a[f"warmup-{key}"][0]] == [1, 2]
    for steps, _ in trials.values():
        assert [s for s, _ in steps] == [3, 4]  # the trials continue at round 3

    # and the clean trial equals 4 rounds straight from a random init, computed here
    g = load_grid(grid)
    clean = next(t for t in g.trials if t.config.attack.kind == "none")
    raw = clean.config.model_dump(mode="json")
    raw["fl"]["init"] = "random"
    sim = Simulation(parse_config(raw))
    ms = sim.run()
    assert [(m["round"], m["main_acc"]) for m in ms[2:]] == trials[clean.trial_key][0]
    assert torch.isfinite(sim.state.global_params).all()
