"""The run loop: step the simulation to `fl.rounds`, evaluate, checkpoint on cadence, stop
on divergence — written once, for every front end.

A front end (`fl-sweep simulate`'s output directory, a Ray Tune trial) is a `RunSink`:
it is told what happened and decides where it goes. Per round the loop calls
`on_round`, then `on_checkpoint` when one is due (every `fl.checkpoint_every` rounds and
after the last), so a sink that writes metrics as they come has them on disk before the
checkpoint that covers them: a crash in between leaves rows past the checkpoint (which a
resume drops), never a checkpoint past its rows (a lost step). The run ends with exactly
one `on_end`: `finished`, or `diverged` when the weights became NaN/inf (a normal end of
a run, not an error). Any other exception propagates and `on_end` is not called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from fl_core.errors import DivergedError

if TYPE_CHECKING:
    from fl_core.simulate import Simulation
    from fl_core.state import SimulationState

FINISHED, DIVERGED = "finished", "diverged"


class RunSink(Protocol):
    def on_round(self, round_num: int, metrics: dict | None, checkpoint_due: bool) -> None:
        """Round `round_num` (1-based) ended; `metrics` on evaluated rounds, else None;
        `checkpoint_due`: `on_checkpoint` follows for this round."""

    def on_checkpoint(self, state: SimulationState, history: list[dict]) -> None:
        """Persist `state` (and `history`, the evaluated rounds' metrics so far, if the
        sink keeps them with its checkpoints)."""

    def on_end(self, status: str, state: SimulationState, history: list[dict],
               error: DivergedError | None) -> None:
        """`status` is FINISHED or DIVERGED (then `error` says in which round)."""


def checkpoint_due(sim: Simulation) -> bool:
    return sim.state.round_idx % sim.config.fl.checkpoint_every == 0 or sim.done


def run_loop(sim: Simulation, sink: RunSink, history: list[dict] | None = None) -> str:
    """Run `sim` from its current state to `fl.rounds`; returns FINISHED or DIVERGED.

    `history` is the evaluated rounds' metrics up to `sim.state` (a resumed run's, which
    the caller has cut at the checkpoint's round); new rounds are appended to it."""
    history = [] if history is None else history
    while not sim.done:
        try:
            metrics = sim.step()
        except DivergedError as e:
            sink.on_end(DIVERGED, sim.state, history, e)
            return DIVERGED
        if metrics is not None:
            history.append(metrics)
        due = checkpoint_due(sim)
        sink.on_round(sim.state.round_idx, metrics, due)
        if due:
            sink.on_checkpoint(sim.state, history)
    sink.on_end(FINISHED, sim.state, history, None)
    return FINISHED
