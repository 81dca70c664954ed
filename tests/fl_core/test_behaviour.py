"""The paper's basic effects in miniature, on the real writers in ../shared (CPU, ~1 min).

One clean pre-training (20 rounds, 10 clients/round, 1 local epoch) is branched three ways
for 10 more rounds: clean; an unconstrained boosted attack every round (ε = 5%, 10 target
writers); the same attack against norm clipping with a small M = 0.5 (benign p90 ≈ 1 here).
Seed 0. Thresholds leave wide margins around what was measured (see the closing note):
measured on 2026-12-01 (CPU): clean 0.812 main / 0.015 backdoor; attack 0.702 main /
0.733 backdoor (mean of the last 5 rounds); clipped 0.793 main / 0.038 backdoor. Under
attack the main accuracy swings between 0.12 and 0.77 from round to round (a boosted update
every round), so its bound is on the mean of the last 5 rounds: 0.632 with the attacker pool
of before issue 25, 0.628 with today's unbiased pool (whose last round alone gives 0.53).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from fl_core.config import parse_config
from fl_core.data import load_data
from fl_core.simulate import Simulation

pytestmark = [pytest.mark.slow, pytest.mark.shared_data]

BASE = {
    "seed": 0,
    "data": {"source": "tff-h5"},
    "fl": {"rounds": 20, "clients_per_round": 10, "local_epochs": 1, "eval_every": 20, "eval_subsample": 1000},
    "attack": {"num_tasks": 10},
}
ATTACK = {"kind": "model-replacement", "fraction": 0.05, "frequency": 1}


@pytest.fixture(scope="module")
def pretrained(shared_digits):
    raw = copy.deepcopy(BASE)
    raw["data"]["path"] = str(shared_digits)
    cfg = parse_config(raw)
    data = load_data(cfg.data, cfg.seed)
    sim = Simulation(cfg, data=data)
    sim.run()
    return raw, data, sim.state


def branch(pretrained, attack, defense):
    raw, data, state = pretrained
    raw = copy.deepcopy(raw)
    raw["fl"].update(rounds=30, eval_every=1)
    raw["attack"].update(attack)
    raw["defense"] = defense
    ms = Simulation(parse_config(raw), data=data, state=state).run()
    return ms[-1]["main_acc"], float(np.mean([m["backdoor_acc"] for m in ms[-5:]])), ms


@pytest.fixture(scope="module")
def attacked(pretrained):
    return branch(pretrained, ATTACK, {})


def test_clean_training_reaches_high_main_accuracy(pretrained):
    main, backdoor, _ = branch(pretrained, {}, {})
    assert main >= 0.75
    assert backdoor <= 0.15


def test_attack_every_round_backdoors_while_main_task_stays(attacked):
    _, backdoor, ms = attacked
    assert all(m["num_attackers"] == 1 for m in ms)
    assert backdoor >= 0.5
    assert np.mean([m["main_acc"] for m in ms[-5:]]) >= 0.5


def test_small_norm_bound_cuts_the_attack_down(pretrained, attacked):
    main, clipped, ms = branch(pretrained, ATTACK, {"norm_bound": 0.5})
    assert all(m["attacker_norm_post"] <= 0.5 + 1e-6 for m in ms)
    assert clipped <= 0.2
    assert clipped < attacked[1] - 0.3
    assert main >= 0.7
