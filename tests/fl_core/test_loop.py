"""`fl_core.loop.run_loop`: the one run loop of every front end (issue 10, item 7)."""

from __future__ import annotations

import pytest
import torch

from fl_core.config import parse_config
from fl_core.loop import DIVERGED, FINISHED, resume_history, run_loop
from fl_core.simulate import Simulation
from fl_core.state import SimulationState

RAW = {
    "seed": 5,
    "fl": {"rounds": 5, "clients_per_round": 3, "local_epochs": 1, "batch_size": 5,
           "eval_every": 2, "checkpoint_every": 2},
    "attack": {"num_tasks": 3},
}


class Recorder:
    def __init__(self):
        self.events = []
        self.saved = []

    def on_round(self, round_num, metrics, checkpoint_due):
        self.events.append(("round", round_num, None if metrics is None else metrics["round"], checkpoint_due))

    def on_checkpoint(self, state, history):
        self.events.append(("checkpoint", state.round_idx, [m["round"] for m in history]))
        self.saved.append(state)

    def on_end(self, status, state, history, error):
        self.events.append(("end", status, state.round_idx, [m["round"] for m in history], error))


def test_events_in_order_with_eval_and_checkpoint_cadence(tiny_data):
    sink = Recorder()
    assert run_loop(Simulation(parse_config(RAW), data=tiny_data), sink) == FINISHED
    assert sink.events == [
        ("round", 1, None, False),
        ("round", 2, 2, True), ("checkpoint", 2, [2]),
        ("round", 3, None, False),
        ("round", 4, 4, True), ("checkpoint", 4, [2, 4]),
        ("round", 5, 5, True), ("checkpoint", 5, [2, 4, 5]),  # the last round: evaluated, saved
        ("end", FINISHED, 5, [2, 4, 5], None),
    ]


def test_resumed_loop_continues_the_history_and_matches_a_straight_run(tiny_data):
    cfg = parse_config(RAW)
    straight = Recorder()
    run_loop(Simulation(cfg, data=tiny_data), straight)
    ckpt = straight.saved[0]  # round 2
    resumed = Recorder()
    history = [{"round": 2}]
    sim = Simulation(cfg, data=tiny_data, state=ckpt)
    assert run_loop(sim, resumed, history) == FINISHED
    assert resumed.events[0] == ("round", 3, None, False)
    assert resumed.events[-1][:4] == ("end", FINISHED, 5, [2, 4, 5])
    assert torch.equal(sim.state.global_params, straight.saved[-1].global_params)


def test_an_ended_run_only_reports_its_end(tiny_data):
    cfg = parse_config(RAW)
    sink = Recorder()
    first = Recorder()
    run_loop(Simulation(cfg, data=tiny_data), first)
    assert run_loop(Simulation(cfg, data=tiny_data, state=first.saved[-1]), sink, [{"round": 5}]) == FINISHED
    assert sink.events == [("end", FINISHED, 5, [5], None)]


def test_divergence_ends_the_loop_with_the_round_and_no_checkpoint(tiny_data):
    raw = {**RAW, "attack": {"kind": "model-replacement", "fraction": 0.4, "frequency": 1,
                             "boost": 1e300, "num_tasks": 3}}
    sink = Recorder()
    assert run_loop(Simulation(parse_config(raw), data=tiny_data), sink) == DIVERGED
    kind, status, reached, history, error = sink.events[-1]
    assert (kind, status) == ("end", DIVERGED) and error is not None
    assert error.round_num == reached + 1  # the round that diverged did not complete
    assert not any(e[0] == "checkpoint" and e[1] > reached for e in sink.events)


class Vouched(Recorder):
    """Records the rounds of the metric rows each checkpoint carries."""

    def on_checkpoint(self, state, history):
        self.events.append(("vouched", state.round_idx, [m["round"] for m in state.metrics]))


@pytest.mark.parametrize("eval_every,checkpoint_every,expected", [
    # rows since the previous checkpoint
    (1, 2, [(2, [1, 2]), (4, [3, 4]), (5, [5])]),
    (2, 2, [(2, [2]), (4, [4]), (5, [5])]),
    # none since the previous checkpoint: still the last one (the line a crash can cut)
    (3, 1, [(1, []), (2, []), (3, [3]), (4, [3]), (5, [5])]),
])
def test_each_checkpoint_carries_the_rows_it_covers(tiny_data, eval_every, checkpoint_every, expected):
    """Issue 19: a checkpoint never runs ahead of the metrics it covers."""
    raw = {**RAW, "fl": {**RAW["fl"], "eval_every": eval_every, "checkpoint_every": checkpoint_every}}
    sink = Vouched()
    run_loop(Simulation(parse_config(raw), data=tiny_data), sink)
    assert [(e[1], e[2]) for e in sink.events if e[0] == "vouched"] == expected


def test_resume_history_restores_a_row_the_file_lost_and_drops_rows_past_the_checkpoint():
    state = SimulationState(4, torch.zeros(1), "h", metrics=({"round": 3, "v": 3}, {"round": 4, "v": 4}))
    file_rows = [{"round": 1}, {"round": 2}, {"round": 3, "v": 3}, {"round": 5}]  # 4 cut short
    assert resume_history(file_rows, state) == [{"round": 1}, {"round": 2}, {"round": 3, "v": 3},
                                                {"round": 4, "v": 4}]
    # nothing lost: the file's rows as they are (no copy from the checkpoint)
    whole = [{"round": 1}, {"round": 3, "v": "file"}, {"round": 4, "v": "file"}]
    assert resume_history(whole, state) == whole
    # an old checkpoint (no rows): the file's rows up to its round, as before issue 19
    assert resume_history(file_rows, SimulationState(4, torch.zeros(1), "h")) == file_rows[:3]


def test_simulation_run_is_the_same_loop_in_memory(tiny_data, monkeypatch):
    """`Simulation.run` goes through `run_loop` (one run loop, issue 20 item 5): the
    callback sees every round, the history equals a sink's, divergence raises."""
    import fl_core.simulate as simulate
    from fl_core.errors import DivergedError

    calls = []
    real = simulate.run_loop
    monkeypatch.setattr(simulate, "run_loop", lambda *a, **k: calls.append(1) or real(*a, **k))
    seen = []
    history = Simulation(parse_config(RAW), data=tiny_data).run(lambda st, m: seen.append((st.round_idx, m is not None)))
    assert calls == [1]
    assert seen == [(1, False), (2, True), (3, False), (4, True), (5, True)]
    sink = Recorder()
    run_loop(Simulation(parse_config(RAW), data=tiny_data), sink)
    drop = ("round_seconds", "eval_seconds", "aggregate_seconds")
    assert [{k: v for k, v in m.items() if k not in drop} for m in history] == \
        [{k: v for k, v in s.metrics[-1].items() if k not in drop} for s in sink.saved]
    raw = {**RAW, "fl": {**RAW["fl"], "client_lr": 1e30}}
    with pytest.raises(DivergedError):
        Simulation(parse_config(raw), data=tiny_data).run()
