"""Ray actors and a lazy population: the population is not put into the object store (it
pickles as its parameters, each actor rebuilds it and renders only its slice's writers),
and the run equals the serial one bit for bit (issue 11, item 1)."""

from __future__ import annotations

import pytest
import torch

ray = pytest.importorskip("ray")

from fl_core.config import parse_config  # noqa: E402
from fl_core.data.synthetic import SyntheticPopulation  # noqa: E402
from fl_core.simulate import Simulation  # noqa: E402
from sweeper.actors import RayActorExecutor  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow]

TIMING = ("round_seconds", "eval_seconds", "aggregate_seconds")


def _run(cfg, data, executor=None):
    sim = Simulation(cfg, data=data, executor=executor)
    out = []
    while not sim.done:
        m = sim.step()
        out.append({k: v for k, v in m.items() if k not in TIMING})
    return sim.state.global_params, out


def test_actors_rebuild_a_lazy_population_and_match_the_serial_run(local_ray):
    torch.set_num_threads(1)
    cfg = parse_config({
        "seed": 2,
        "data": {"source": "synthetic", "num_writers": 50, "examples_per_writer": 12},
        "fl": {"rounds": 2, "clients_per_round": 5, "local_epochs": 1, "batch_size": 6,
               "eval_subsample": 60, "device": "cpu"},
        "attack": {"kind": "model-replacement", "fraction": 0.1, "frequency": 1, "num_tasks": 2, "max_tasks": 3},
    })
    data = SyntheticPopulation(50, 12, seed=2)  # lazy at any K when built directly
    ref_w, ref_m = _run(cfg, data)
    two = RayActorExecutor(cfg, data, workers=2, cpus_per_worker=0.5)
    try:
        assert two.data_ref is data  # sent as its parameters, not put as pixels
        w, m = _run(cfg, data, two)
    finally:
        two.close()
    assert torch.equal(w, ref_w) and m == ref_m
