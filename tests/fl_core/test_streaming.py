"""Large cohorts, the server side (issue 11, item 2): FedAvg folds each update into a float64
running sum as it arrives (`RoundFold`), bit-identical to the stacked [n, d] path for the
same results, whatever order they arrive in; robust aggregators still get the matrix; a
streaming round does not keep the updates it has folded. torch.equal throughout: the two
paths do the same float64 adds in the same order, so any difference is a bug."""

from __future__ import annotations

import gc
import random
import weakref

import pytest
import torch

from fl_core.aggregators import AGGREGATORS
from fl_core.aggregators.base import needs_matrix
from fl_core.aggregators.fedavg import FedAvg
from fl_core.client import ClientRunner
from fl_core.config import parse_config
from fl_core.executor import SerialExecutor, stream_results
from fl_core.build import make_aggregator, make_defenses
from fl_core.round import RoundFold, apply_round
from fl_core.simulate import Simulation
from fl_core.state import SimulationState
from fl_core.types import ClientResult, ClientTask, RoundPlan

TIMING = ("round_seconds", "eval_seconds", "aggregate_seconds")


class StackedFedAvg:
    """FedAvg without the streaming capability: the round must stack the updates (the path
    every robust aggregator takes), and FedAvg's `aggregate` sums the matrix's rows."""

    def __init__(self):
        self.inner = FedAvg()
        self.seen: list[torch.Tensor] = []

    def aggregate(self, updates, weights, ctx, state):
        self.seen.append(updates.clone())
        return self.inner.aggregate(updates, weights, ctx, state)


def round_inputs(n: int = 9, d: int = 5_000, seed: int = 1, attackers=(2, 6)):
    """n results with unequal n_k, norms spread over four decades (so clipping at 1 clips
    some and not others, and the float64 sum sees operands of very different size), one
    duplicate writer (slot 1), two attackers."""
    g = torch.Generator().manual_seed(seed)
    results = []
    for i in range(n):
        k, slot = (3, 1) if i == n - 1 else (10 * i + 3, 0)  # the last: writer 3 again
        scale = 10.0 ** (i % 4 - 2)
        role = "attacker" if i in attackers else "benign"
        results.append(ClientResult(k, slot, role, 5 + 3 * i, scale * torch.randn(d, generator=g)))
    plan = RoundPlan(4, tuple(ClientTask(4, r.client_index, r.slot, r.role, 0) for r in results))
    return results, plan


DEFENSES = {
    "weighted": {},
    "uniform": {"weighting": "uniform"},
    "clipped": {"norm_bound": 1.0},  # auto weighting: uniform when a defense is on
    "clipped-weighted": {"norm_bound": 1.0, "weighting": "weighted"},
    "clipped-noise": {"norm_bound": 1.0, "noise_sigma": 0.01},
    "adaptive-noise": {"norm_bound": 1.0, "clip_quantile": 0.5, "noise_sigma": 0.01},
    "crfl": {"crfl_sigma": 0.01, "crfl_rho_max": 10.0},
}


@pytest.mark.parametrize("name", sorted(DEFENSES))
def test_streaming_fedavg_is_bit_identical_to_the_stacked_path(name):
    c = parse_config({"seed": 3, "fl": {"clients_per_round": 9}, "defense": DEFENSES[name]})
    results, plan = round_inputs()
    state = SimulationState(4, torch.linspace(-1, 1, 5_000), "h")
    assert not needs_matrix(make_aggregator(c))  # the config's FedAvg streams
    streamed, s_stats = apply_round(c, state, plan, results, make_defenses(c))
    stacked_agg = StackedFedAvg()
    stacked, m_stats = apply_round(c, state, plan, results, make_defenses(c), aggregator=stacked_agg)
    assert len(stacked_agg.seen) == 1 and stacked_agg.seen[0].shape == (9, 5_000)  # it did stack
    assert torch.equal(streamed.global_params, stacked.global_params)
    assert s_stats.as_metrics() == m_stats.as_metrics()
    assert not torch.equal(streamed.global_params, state.global_params)
    if "norm_bound" in DEFENSES[name]:
        m = s_stats.as_metrics()
        assert 0 < m["clip_fraction"] < 1  # some clipped, some not: both branches folded
        assert m["attacker_norm_post"] < m["attacker_norm_pre"] or m["attacker_norm_pre"] <= 1.0


def test_streaming_fold_does_not_depend_on_arrival_order():
    c = parse_config({"seed": 3, "fl": {"clients_per_round": 9}, "defense": {"norm_bound": 1.0, "noise_sigma": 0.01}})
    results, plan = round_inputs()
    state = SimulationState(4, torch.zeros(5_000), "h")
    ref, ref_stats = apply_round(c, state, plan, results, make_defenses(c))
    for seed in range(4):
        order = list(range(len(results)))
        random.Random(seed).shuffle(order)
        fold = RoundFold(c, state, plan, make_defenses(c))
        assert fold.accumulator is not None
        for i in order:
            fold.add(results[i])
        got, stats = fold.finish()
        assert torch.equal(got.global_params, ref.global_params)
        assert stats.as_metrics() == ref_stats.as_metrics()


def test_a_streaming_round_drops_each_update_once_folded_and_a_matrix_round_keeps_them():
    """In key order each result is folded on arrival: with FedAvg nothing refers to its
    update afterwards; a robust aggregator (median) needs them all until the end."""
    c = parse_config({"fl": {"clients_per_round": 6}})
    results, plan = round_inputs(6, attackers=())
    ordered = sorted(results, key=lambda r: (r.client_index, r.slot))
    state = SimulationState(4, torch.zeros(5_000), "h")
    for aggregator, kept in ((FedAvg(), False), (make_aggregator(parse_config({"defense": {"aggregator": "median"}})), True)):
        fold = RoundFold(c, state, plan, [], aggregator)
        refs = []
        for r in ordered:
            fresh = ClientResult(r.client_index, r.slot, r.role, r.num_examples, r.delta.clone())
            refs.append(weakref.ref(fresh.delta))
            fold.add(fresh)
            del fresh
        gc.collect()
        assert [ref() is not None for ref in refs] == [kept] * len(refs)
        fold.finish()


def test_early_arrivals_wait_for_their_turn_and_bad_results_are_refused():
    c = parse_config({"fl": {"clients_per_round": 6}})
    results, plan = round_inputs(6, attackers=())
    ordered = sorted(results, key=lambda r: (r.client_index, r.slot))
    fold = RoundFold(c, SimulationState(4, torch.zeros(5_000), "h"), plan, [])
    fold.add(ordered[2])
    fold.add(ordered[1])
    assert len(fold.pending) == 2 and not fold.roles  # nothing folded before the first key
    fold.add(ordered[0])
    assert not fold.pending and len(fold.roles) == 3
    with pytest.raises(ValueError, match="twice"):
        fold.add(ordered[1])
    with pytest.raises(ValueError, match="no result for clients"):
        fold.finish()


def test_robust_aggregators_get_the_matrix_and_only_fedavg_streams():
    assert [n for n, s in AGGREGATORS.items() if not needs_matrix(s.build(s.params(), parse_config({"data": {"max_writers": 400}})))] == ["fedavg"]

    class Spy:  # no `streaming` attribute: a matrix rule
        def __init__(self):
            self.inner = make_aggregator(parse_config({"defense": {"aggregator": "median"}}))
            self.updates = None

        def aggregate(self, updates, weights, ctx, state):
            self.updates = updates
            return self.inner.aggregate(updates, weights, ctx, state)

    c = parse_config({"fl": {"clients_per_round": 9}, "defense": {"norm_bound": 1.0}})
    results, plan = round_inputs()
    spy = Spy()
    apply_round(c, SimulationState(4, torch.zeros(5_000), "h"), plan, results[::-1], make_defenses(c), spy)
    ordered = sorted(results, key=lambda r: (r.client_index, r.slot))
    assert spy.updates.shape == (9, 5_000)
    for row, r in zip(spy.updates, ordered):  # key order, each row clipped to ≤ 1
        norm = float(torch.linalg.vector_norm(r.delta.double()))
        expect = r.delta if norm <= 1.0 else r.delta * (1.0 / norm)
        assert torch.equal(row, expect)


class ShuffledStream:
    """An executor that trains the tasks in a shuffled order and yields each result as it
    is done (as a pool of actors would)."""

    def __init__(self, runner, seed):
        self.runner, self.seed = runner, seed

    def stream(self, tasks, global_params):
        order = list(range(len(tasks)))
        random.Random(self.seed).shuffle(order)
        for i in order:
            yield i, self.runner.run([tasks[i]], global_params)[0]


class ListOnly:
    """A plain `ClientExecutor` (map only): the round falls back to its list."""

    def __init__(self, runner):
        self.runner = runner

    def map(self, tasks, global_params):
        return self.runner.run(tasks, global_params)


RAW = {
    "seed": 4,
    "fl": {"rounds": 2, "clients_per_round": 5, "local_epochs": 1, "batch_size": 5, "device": "cpu"},
    "attack": {"kind": "model-replacement", "fraction": 0.2, "frequency": 1, "num_tasks": 2, "max_tasks": 3},
}


@pytest.mark.parametrize("defense", [{}, {"norm_bound": 0.5, "noise_sigma": 0.01}])
def test_simulation_streams_with_the_same_bits_as_the_list_path(tiny_data, defense):
    cfg = parse_config({**RAW, "defense": defense})
    runs = []
    for make in (lambda r: SerialExecutor(r), lambda r: ListOnly(r), lambda r: ShuffledStream(r, 5)):
        sim = Simulation(cfg, data=tiny_data, executor=make(ClientRunner(cfg, tiny_data, "cpu")))
        hist = [{k: v for k, v in m.items() if k not in TIMING} for m in sim.run()]
        runs.append((sim.state.global_params, hist))
    for w, h in runs[1:]:
        assert torch.equal(w, runs[0][0]) and h == runs[0][1]
    assert any(m["num_attackers"] for m in runs[0][1])


def test_stream_results_uses_stream_when_there_is_one(tiny_data):
    cfg = parse_config(RAW)
    runner = ClientRunner(cfg, tiny_data, "cpu")
    tasks = [ClientTask(0, k, 0, "benign", 100 + k) for k in (5, 1, 3)]
    gp = torch.zeros(sum(p.numel() for p in runner.model.parameters()))
    it = stream_results(SerialExecutor(runner), tasks, gp)
    assert not isinstance(it, list) and iter(it) is it  # lazy: trains as it is consumed
    first = next(it)
    assert first[0] == 0 and first[1].client_index == 5
    assert [i for i, _ in it] == [1, 2]
    assert [i for i, _ in stream_results(ListOnly(runner), tasks, gp)] == [0, 1, 2]
