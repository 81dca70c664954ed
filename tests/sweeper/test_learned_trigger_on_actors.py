"""An attack that learns its trigger (A3FL, `fl_core.attacks.base.LearnedTrigger`) on the Ray
actor pool: the trigger is learnt once per attacked round on the driver and rides to the
attackers inside their tasks, so two actors give the serial run bit for bit (global weights,
the learnt trigger, every metric)."""

from __future__ import annotations

import pytest
import torch

ray = pytest.importorskip("ray")

from fl_core.config import parse_config  # noqa: E402
from fl_core.simulate import Simulation  # noqa: E402
from sweeper.actors import RayActorExecutor  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow]

TIMING = ("round_seconds", "eval_seconds", "aggregate_seconds")


def _run(cfg, data, executor=None):
    sim = Simulation(cfg, data=data, executor=executor)
    return sim, [{k: v for k, v in m.items() if k not in TIMING} for m in sim.run()]


def test_a3fl_on_two_actors_equals_the_serial_run(local_ray, tiny_data):
    torch.set_num_threads(1)
    cfg = parse_config({
        "seed": 4,
        "fl": {"rounds": 3, "clients_per_round": 6, "local_epochs": 1, "batch_size": 5, "eval_every": 1,
               "device": "cpu"},
        "attack": {"kind": "a3fl", "fraction": 0.2, "frequency": 1,
                   "params": {"trigger_epochs": 2, "adv_epochs": 1, "pgd_iterations": 2}},
        "defense": {"norm_bound": 2.0},
    })
    ref, ref_m = _run(cfg, tiny_data)
    assert sum(m["num_attackers"] for m in ref_m) >= 2 and "a3fl_trigger_loss" in ref_m[-1]
    pool = RayActorExecutor(cfg, tiny_data, workers=2, cpus_per_worker=0.5)
    try:
        sim, m = _run(cfg, tiny_data, pool)
    finally:
        pool.close()
    assert torch.equal(sim.state.global_params, ref.state.global_params) and m == ref_m
    assert sim.state.attack_state.keys() == ref.state.attack_state.keys() == {"trigger"}
    assert torch.equal(sim.state.attack_state["trigger"], ref.state.attack_state["trigger"])
