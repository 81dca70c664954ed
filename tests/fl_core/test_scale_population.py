"""A round with K = 10^6 synthetic writers touches O(cohort) writers (issue 11, item 1).

The population is lazy (`fl_core.data.synthetic.SyntheticPopulation`): it holds the n_k
array, and the round renders only the cohort, the target writers and the evaluation
writers. Speed is a benchmark's job (`bench/scale.py`); here we assert the work done."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fl_core.config import parse_config
from fl_core.data import load_data
from fl_core.data.population import WriterPopulation, is_lazy
from fl_core.data.synthetic import SyntheticPopulation
from fl_core.simulate import Simulation

K = 10**6


def config(**attack):
    return parse_config({
        "seed": 3,
        "data": {"source": "synthetic", "num_writers": K, "examples_per_writer": 20},
        "fl": {"rounds": 1, "clients_per_round": 10, "local_epochs": 1, "batch_size": 10,
               "eval_subsample": 200, "device": "cpu", "backend": "sequential"},
        "attack": {"kind": "model-replacement", "fraction": 0.001, "num_tasks": 3, "max_tasks": 5,
                   "schedule": "fixed-frequency", "frequency": 1, **attack},
    })


def one_round(cfg):
    data = load_data(cfg.data, cfg.seed)
    sim = Simulation(cfg, data)
    metrics = sim.step()
    return sim, data, metrics


@pytest.fixture(scope="module")
def run():
    return one_round(config())


def test_the_loader_returns_a_lazy_population_holding_only_n_k(run):
    _, data, _ = run
    assert isinstance(data, SyntheticPopulation) and is_lazy(data)
    assert isinstance(data, WriterPopulation)
    assert data.num_writers == K and data.train_counts().shape == (K,)
    assert data.train_counts().dtype == np.int64 and data.train_counts().min() >= 5


def test_a_round_renders_only_cohort_targets_and_eval_writers(run):
    sim, data, m = run
    cfg = sim.config
    plan_size = cfg.fl.clients_per_round
    # train splits: the round's cohort (the attacker replaces one member) + the 3 targets (D_mal)
    assert data.rendered[0] <= plan_size + cfg.attack.num_tasks
    # test splits: eval writers (≥ 1 test image each, so ≤ 200 of them) + the targets' held-out
    assert data.rendered[1] <= cfg.fl.eval_subsample + cfg.attack.num_tasks
    assert m["round"] == 1 and 0.0 <= m["main_acc"] <= 1.0
    assert m["backdoor_acc"] is not None and m["backdoor_acc_heldout"] is not None
    assert sim.evaluator.test_y.shape == (cfg.fl.eval_subsample,)
    assert isinstance(sim.population.attackers, np.ndarray) and len(sim.population.attackers) == 1000
    assert not np.isin(sim.population.attackers, sim.backdoor.reserved).any()


def test_the_round_is_deterministic(run):
    sim, _, m = run
    sim2, _, m2 = one_round(config())
    assert torch.equal(sim.state.global_params, sim2.state.global_params)
    for key in ("main_acc", "main_loss", "backdoor_acc", "backdoor_acc_heldout", "collateral_rate"):
        assert m[key] == m2[key], key


def test_targets_and_attacker_pool_do_not_depend_on_n(run):
    """N = 3 and N = 5 share the reserved head and the attacker pool; the targets nest."""
    sim, data, _ = run
    other = Simulation(config(num_tasks=5), data)
    assert set(sim.backdoor.targets) < set(other.backdoor.targets)
    assert sim.backdoor.reserved == other.backdoor.reserved
    np.testing.assert_array_equal(sim.population.attackers, other.population.attackers)


def test_random_sampling_finds_the_pool_members_in_a_cohort(run):
    """Random sampling: attackers are exactly the cohort members in the pool."""
    from fl_core.sampling import plan_round

    sim, _, _ = run
    cfg = config(schedule="random-sampling", fraction=0.3)  # many attackers, to see some
    sim2 = Simulation(cfg, sim.data)
    plan = plan_round(cfg, sim2.population, 0)
    pool = set(sim2.population.attackers.tolist())
    roles = [(t.client_index in pool, t.role == "attacker") for t in plan.tasks]
    assert all(a == b for a, b in roles) and any(a for a, _ in roles)
