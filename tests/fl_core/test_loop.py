"""`fl_core.loop.run_loop`: the one run loop of every front end (issue 10, item 7)."""

from __future__ import annotations

import torch

from fl_core.config import parse_config
from fl_core.loop import DIVERGED, FINISHED, run_loop
from fl_core.simulate import Simulation

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
