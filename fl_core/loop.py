"""The run loop: step the simulation to `fl.rounds`, evaluate, checkpoint on cadence, stop
on divergence — written once, for every front end.

A front end (`fl-sweep simulate`'s output directory, a Ray Tune trial) is a `RunSink`:
it is told what happened and decides where it goes. Per round the loop calls
`on_round`, then `on_checkpoint` when one is due (every `fl.checkpoint_every` rounds and
after the last), so a sink that writes metrics as they come has them on disk before the
checkpoint that covers them: a crash in between leaves rows past the checkpoint (which a
resume drops). That order is not enough on its own: a crash (or a full disk) can still cut
the last line of the metrics file, and that line may be a round the checkpoint covers. So
each checkpoint carries the rows since the previous one, and at least the last evaluated
row (`SimulationState.metrics`), and a resume rebuilds the history with `resume_history`:
a checkpoint never runs ahead of the metrics it covers. The run ends with exactly
one `on_end`: `finished`, or `diverged` when the weights became NaN/inf (a normal end of
a run, not an error). Any other exception propagates and `on_end` is not called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from fl_core.errors import DivergedError

if TYPE_CHECKING:
    from fl_core.config import SimulationConfig
    from fl_core.state import SimulationState

FINISHED, DIVERGED = "finished", "diverged"


class Steppable(Protocol):
    """What the loop drives: `fl_core.simulate.Simulation` (named by shape, so that the
    loop does not import the simulation that runs through it)."""

    config: SimulationConfig
    state: SimulationState

    @property
    def done(self) -> bool: ...

    def step(self) -> dict | None: ...


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


def checkpoint_due(sim: Steppable) -> bool:
    return sim.state.round_idx % sim.config.fl.checkpoint_every == 0 or sim.done


def resume_history(rows: list[dict], state: SimulationState) -> list[dict]:
    """The evaluated rounds' metrics up to a resumed checkpoint: the `rows` a front end
    read back (its metrics file, maybe missing a last line cut short by a crash) with a
    round ≤ `state.round_idx`, plus the checkpoint's own rows for any round missing from
    them, in round order. Rows past the checkpoint are dropped: those rounds run again.
    Every row's `round` must be an int (the caller's reader checks its file)."""
    kept = [r for r in rows if r["round"] <= state.round_idx]
    have = {r["round"] for r in kept}
    restored = [r for r in state.metrics if r["round"] not in have]
    if not restored:
        return kept
    return sorted(kept + restored, key=lambda r: r["round"])  # stable: file order kept


def _vouched(history: list[dict], since: int) -> tuple[dict, ...]:
    """The rows a checkpoint carries: those after round `since` (the previous checkpoint's)
    and, whatever the cadences, the last one (the line a crash can cut)."""
    rows = [m for m in history if m["round"] > since]
    return tuple(rows if rows else history[-1:])


def run_loop(sim: Steppable, sink: RunSink, history: list[dict] | None = None) -> str:
    """Run `sim` from its current state to `fl.rounds`; returns FINISHED or DIVERGED.

    `history` is the evaluated rounds' metrics up to `sim.state` (a resumed run's, from
    `resume_history`); new rounds are appended to it. The state given to
    `on_checkpoint` carries the rows that checkpoint vouches for (`_vouched`)."""
    history = [] if history is None else history
    since = sim.state.round_idx
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
            sink.on_checkpoint(sim.state.replace(metrics=_vouched(history, since)), history)
            since = sim.state.round_idx
    sink.on_end(FINISHED, sim.state, history, None)
    return FINISHED
