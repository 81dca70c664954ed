"""Invariance tests (torch.equal, not allclose): resume, executor order, repeat runs."""

from __future__ import annotations

import math
import os
import random

import pytest
import torch

from fl_core.client import ClientRunner
from fl_core.config import parse_config
from fl_core.errors import CheckpointMismatchError, DivergedError
from fl_core.simulate import Simulation
from fl_core.state import load_state, save_state

RAW = {
    "seed": 11,
    "fl": {"rounds": 4, "clients_per_round": 4, "local_epochs": 1, "batch_size": 5, "eval_every": 1},
    "attack": {"kind": "pgd", "fraction": 0.2, "frequency": 2, "num_tasks": 3, "pgd_iterations": 2},
    "defense": {"norm_bound": 2.0, "noise_sigma": 0.01},
}


@pytest.fixture(scope="module")
def config():
    return parse_config(RAW)


def test_resume_after_save_load_is_bit_identical(config, tiny_data, tmp_path):
    straight = Simulation(config, data=tiny_data)
    m_straight = straight.run()

    first = Simulation(config, data=tiny_data)
    m1 = [first.step(), first.step()]
    save_state(tmp_path / "state.pt", first.state)
    resumed = Simulation(config, data=tiny_data, state=load_state(tmp_path / "state.pt", config))
    assert resumed.state.round_idx == 2
    m2 = resumed.run()

    assert torch.equal(straight.state.global_params, resumed.state.global_params)
    drop = {"round_seconds", "eval_seconds", "aggregate_seconds"}
    strip = lambda ms: [{k: v for k, v in m.items() if k not in drop} for m in ms]
    assert strip(m_straight) == strip(m1 + m2)
    assert any(m["num_attackers"] for m in m_straight)  # the attack path was exercised


class ShuffledExecutor:
    """Trains tasks in a random order (as a pool completes them) and returns them in order."""

    def __init__(self, runner):
        self.runner = runner

    def map(self, tasks, global_params):
        order = list(range(len(tasks)))
        random.Random(len(tasks)).shuffle(order)
        done = {i: self.runner.run([tasks[i]], global_params)[0] for i in order}
        return [done[i] for i in range(len(tasks))]


@pytest.mark.slow  # whole simulations, twice
def test_execution_order_does_not_change_results(config, tiny_data):
    a = Simulation(config, data=tiny_data)
    a.run()
    b = Simulation(config, data=tiny_data, executor=ShuffledExecutor(ClientRunner(config, tiny_data, "cpu")))
    b.run()
    assert torch.equal(a.state.global_params, b.state.global_params)


def test_different_seed_gives_different_weights(config, tiny_data):
    a = Simulation(config, data=tiny_data)
    b = Simulation(parse_config({**RAW, "seed": 12}), data=tiny_data)
    a.step(), b.step()
    assert not torch.equal(a.state.global_params, b.state.global_params)


def test_checkpoint_refuses_another_config(config, tiny_data, tmp_path):
    sim = Simulation(config, data=tiny_data)
    sim.step()
    save_state(tmp_path / "s.pt", sim.state)
    other = parse_config({**RAW, "fl": {**RAW["fl"], "client_lr": 0.2}})
    with pytest.raises(CheckpointMismatchError, match="config hash"):
        load_state(tmp_path / "s.pt", other)
    longer = parse_config({**RAW, "fl": {**RAW["fl"], "rounds": 40}})  # execution-only key
    assert load_state(tmp_path / "s.pt", longer).round_idx == 1


def test_save_is_atomic_and_leaves_no_temp_files(config, tiny_data, tmp_path):
    sim = Simulation(config, data=tiny_data)
    save_state(tmp_path / "s.pt", sim.state)
    save_state(tmp_path / "s.pt", sim.state)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.pt"]
    # the usual umask permissions, not mkstemp's private 0600 (shared cluster mounts)
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "s.pt").stat().st_mode & 0o777 == 0o666 & ~mask


def test_nan_weights_stop_with_diverged(tiny_data):
    raw = {**RAW, "defense": {}, "attack": {"kind": "model-replacement", "fraction": 0.2,
                                            "frequency": 1, "num_tasks": 3, "boost": 1e300}}
    sim = Simulation(parse_config(raw), data=tiny_data)
    with pytest.raises(DivergedError, match="diverged.*round 1"):
        sim.step()


def test_pgd_projects_after_every_pass(tiny_data, monkeypatch):
    """P = 3 passes → 3 projections, each of the un-boosted difference onto M/β; the sent
    update has norm ≤ M."""
    import fl_core.attacks.pgd as pgd

    calls = []
    real = pgd.project_l2
    monkeypatch.setattr(pgd, "project_l2", lambda d, r: calls.append((float(d.norm()), r)) or real(d, r))
    raw = {**RAW, "attack": {**RAW["attack"], "pgd_iterations": 3, "frequency": 1}, "defense": {"norm_bound": 0.5}}
    c = parse_config(raw)
    sim = Simulation(c, data=tiny_data)
    m = sim.step()
    beta = 4 / 1  # uniform weighting (clipping on): β = |S|/(η m) = 4
    assert [r for _, r in calls] == [pytest.approx(0.5 / beta)] * 3
    # the projection and the reported norm each sum ~1.2M float32 squares: a typical
    # (random-walk) rounding of √n·u each; a missing projection would be off by far more
    n = sim.state.global_params.numel()
    assert m["attacker_norm_pre"] <= 0.5 * (1 + 2 * math.sqrt(n) * 2.0**-24)
