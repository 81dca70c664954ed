"""The newer plug-ins on the Ray actor pool (issue 12, item 6; issue 21): DBA on the trigger
task behind Krum, Neurotoxin behind FoolsGold (history in the state), constrain-and-scale
behind clipping, and the zoo's forging attacks, rules with state, pre-aggregation and
adaptive clipping, trained by two actors, equal the serial run bit for bit."""

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


@pytest.mark.parametrize("attack,defense", [
    ({"kind": "dba"}, {"aggregator": "krum", "aggregator_params": {"f": 1}}),
    ({"kind": "neurotoxin"}, {"norm_bound": 2.0, "aggregator": "foolsgold"}),
    ({"kind": "constrain-and-scale"}, {"norm_bound": 2.0}),
    # issue 21: colluding attackers forge on the server (the round hook), a rule with state,
    # a pre-aggregation step and a stateful defense
    ({"kind": "min-max", "schedule": "every-round"}, {"aggregator": "centered-clipping",
                                                      "aggregator_params": {"tau": 0.5}}),
    ({"kind": "alie", "schedule": "every-round"}, {"aggregator": "dnc", "preaggregation": "nnm"}),
    ({"kind": "label-flip", "schedule": "every-round"}, {"norm_bound": 2.0, "clip_quantile": 0.5}),
])
def test_plugins_on_two_actors_equal_the_serial_run(local_ray, tiny_data, attack, defense):
    torch.set_num_threads(1)
    cfg = parse_config({
        "seed": 4,
        "fl": {"rounds": 3, "clients_per_round": 6, "local_epochs": 1, "batch_size": 5, "eval_every": 1,
               "device": "cpu"},
        "attack": {"fraction": 0.2, "frequency": 1, "num_tasks": 3, "pgd_iterations": 2, **attack},
        "defense": defense,
    })
    ref, ref_m = _run(cfg, tiny_data)
    ref_state = ref.state
    assert sum(m["num_attackers"] for m in ref_m) == 3 and ref_m[-1]["backdoor_acc"] is not None
    pool = RayActorExecutor(cfg, tiny_data, workers=2, cpus_per_worker=0.5)
    try:
        sim, m = _run(cfg, tiny_data, pool)
        state = sim.state
    finally:
        pool.close()
    assert torch.equal(state.global_params, ref_state.global_params) and m == ref_m
    assert state.aggregator_state.keys() == ref_state.aggregator_state.keys()
    assert all(torch.equal(state.aggregator_state[k], ref_state.aggregator_state[k]) for k in state.aggregator_state)
