"""One simulation in a local output directory (what `fl-sweep simulate` runs): the
directory sink of `fl_core.loop.run_loop`.

DIR/config.yaml    the fully resolved config
DIR/metrics.jsonl  one JSON object per evaluated round, appended and fsynced as rounds end
DIR/state.pt       the SimulationState, every fl.checkpoint_every rounds and at the end
DIR/status.json    running | finished | diverged, with the round reached

Resume loads state.pt and first rewrites metrics.jsonl (atomically) without any line past
the checkpoint's round (and without a line cut short by a crash), so the re-run rounds are
logged exactly once. A fresh run refuses a directory that already holds any of these files
unless `force` (it would overwrite another run's results).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Callable

from fl_core.config import SimulationConfig
from fl_core.errors import DivergedError
from fl_core.loop import run_loop
from fl_core.simulate import Simulation
from fl_core.state import SimulationState, load_state, save_state
from sweeper.configio import dump_config
from sweeper.errors import SweeperError
from sweeper.jsonl import append_row, read_jsonl, write_jsonl
from sweeper.rundir import CONFIG, METRICS, STATE, STATUS  # noqa: F401 (re-exported)
from sweeper.storage import atomic_write_text



def truncate_metrics(path: Path, last_round: int) -> list[dict]:
    """Keep only the lines with round ≤ last_round (atomic rewrite); returns them."""
    kept = [m for m in read_jsonl(path) if m.get("round", 0) <= last_round]
    write_jsonl(path, kept)
    return kept


def check_fresh_out(out: Path, force: bool) -> None:
    """A fresh run may not write over a non-empty directory unless forced."""
    if force or not out.exists():
        return
    if not out.is_dir():
        raise SweeperError(f"--out {out}: exists and is not a directory")
    if any(out.iterdir()):
        raise SweeperError(
            f"--out {out}: the directory is not empty (a previous run?); continue that run with "
            "--resume, overwrite it with --force, or choose another --out")


class DirectorySink:
    """Writes a run into `out` (see the module docstring); `on_round` is the caller's."""

    def __init__(self, out: Path, status: dict, metrics_file: IO[str],
                 on_round: Callable[[int, dict | None], None] | None = None):
        self.out, self.status, self.metrics_file, self.callback = out, status, metrics_file, on_round

    def on_round(self, round_num: int, metrics: dict | None, checkpoint_due: bool) -> None:
        if metrics is not None:
            append_row(self.metrics_file, metrics)
        if self.callback is not None:
            self.callback(round_num, metrics)

    def on_checkpoint(self, state: SimulationState, history: list[dict]) -> None:
        save_state(self.out / STATE, state)

    def on_end(self, status: str, state: SimulationState, history: list[dict],
               error: DivergedError | None) -> None:
        if error is not None:
            self.status.update(status=status, round=error.round_num, message=str(error))
        else:
            self.status.update(status=status, round=state.round_idx)
        atomic_write_text(self.out / STATUS, json.dumps(self.status))


def run_local(
    config: SimulationConfig,
    out: Path,
    resume: bool = False,
    on_round: Callable[[int, dict | None], None] | None = None,
    force: bool = False,
) -> str:
    """Run (or resume) to config.fl.rounds in `out`; returns the final status."""
    if not resume:
        check_fresh_out(out, force)
    state = load_state(out / STATE, config) if resume else None
    # Build (and so validate against the data) before anything is written.
    sim = Simulation(config, state=state)
    out.mkdir(parents=True, exist_ok=True)
    history: list[dict] = []
    if resume:
        history = truncate_metrics(out / METRICS, state.round_idx)
    else:
        (out / METRICS).unlink(missing_ok=True)
        (out / STATE).unlink(missing_ok=True)
    atomic_write_text(out / CONFIG, dump_config(config))
    status = {"status": "running", "round": sim.state.round_idx, "rounds": config.fl.rounds}
    atomic_write_text(out / STATUS, json.dumps(status))
    with open(out / METRICS, "a") as mf:
        return run_loop(sim, DirectorySink(out, status, mf, on_round), history)
