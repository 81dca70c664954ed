"""The Ray actor pool streams a round (issue 11, item 2): the cohort is cut into pieces of at
most `max_piece` tasks dealt round-robin to the actors, each piece's results are handed on
as it finishes, and the round (FedAvg's running sum and a robust aggregator's matrix alike)
equals the serial run bit for bit, whatever the piece size and completion order."""

from __future__ import annotations

import pytest
import torch

ray = pytest.importorskip("ray")

from fl_core.config import parse_config  # noqa: E402
from fl_core.data import load_data  # noqa: E402
from fl_core.simulate import Simulation  # noqa: E402
from fl_core.types import ClientTask  # noqa: E402
from sweeper.actors import RayActorExecutor  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow]

TIMING = ("round_seconds", "eval_seconds", "aggregate_seconds")


def _run(cfg, data, executor=None):
    sim = Simulation(cfg, data=data, executor=executor)
    out = [{k: v for k, v in m.items() if k not in TIMING} for m in sim.run()]
    return sim.state.global_params, out


def test_pool_streams_pieces_and_matches_the_serial_run(local_ray):
    torch.set_num_threads(1)
    runs = {}
    for aggregator in ("fedavg", "median"):
        cfg = parse_config({
            "seed": 5,
            "data": {"source": "synthetic", "num_writers": 30, "examples_per_writer": 8},
            "fl": {"rounds": 2, "clients_per_round": 7, "local_epochs": 1, "batch_size": 4, "device": "cpu"},
            "attack": {"kind": "model-replacement", "fraction": 0.1, "frequency": 1, "num_tasks": 2, "max_tasks": 3},
            "defense": {"aggregator": aggregator, "norm_bound": 1.0},
        })
        data = load_data(cfg.data, cfg.seed)
        ref = _run(cfg, data)
        pool = RayActorExecutor(cfg, data, workers=2, cpus_per_worker=0.5, max_piece=2)
        try:
            assert pool.pieces(7) == [(0, 2), (2, 4), (4, 6), (6, 7)]  # ≤ 2 tasks, ≥ 1 per actor
            assert pool.pieces(3) == [(0, 2), (2, 3)]
            tasks = [ClientTask(0, k, 0, "benign", 50 + k) for k in range(7)]
            got = list(pool.stream(tasks, ref[0]))
            assert sorted(i for i, _ in got) == list(range(7))
            assert all(r.client_index == tasks[i].client_index and r.delta.numel() == ref[0].numel() for i, r in got)
            runs[aggregator] = _run(cfg, data, pool)
        finally:
            pool.close()
        assert torch.equal(runs[aggregator][0], ref[0]) and runs[aggregator][1] == ref[1]
    assert not torch.equal(runs["fedavg"][0], runs["median"][0])
