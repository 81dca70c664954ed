"""One simulation in a local output directory (what `fl-sweep simulate` runs).

DIR/config.yaml    the fully resolved config
DIR/metrics.jsonl  one JSON object per evaluated round, appended and fsynced as rounds end
DIR/state.pt       the SimulationState, every fl.checkpoint_every rounds and at the end
DIR/status.json    running | finished | diverged, with the round reached

Resume loads state.pt and first rewrites metrics.jsonl (atomically) without any line past
the checkpoint's round, so the re-run rounds are logged exactly once.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

from fl_core.config import SimulationConfig
from fl_core.errors import DivergedError
from fl_core.simulate import Simulation
from fl_core.state import load_state, save_state
from sweeper.configio import dump_config
from sweeper.storage import atomic_write_text

STATE, METRICS, CONFIG, STATUS = "state.pt", "metrics.jsonl", "config.yaml", "status.json"


def read_metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(path: Path, last_round: int) -> None:
    """Keep only the lines with round ≤ last_round (atomic rewrite)."""
    kept = [m for m in read_metrics(path) if m["round"] <= last_round]
    atomic_write_text(path, "".join(json.dumps(m) + "\n" for m in kept))


def run_local(
    config: SimulationConfig,
    out: Path,
    resume: bool = False,
    on_round: Callable[[int, dict | None], None] | None = None,
) -> str:
    """Run (or resume) to config.fl.rounds in `out`; returns the final status."""
    state = load_state(out / STATE, config) if resume else None
    # Build (and so validate against the data) before anything is written.
    sim = Simulation(config, state=state)
    out.mkdir(parents=True, exist_ok=True)
    if resume:
        truncate_metrics(out / METRICS, state.round_idx)
    else:
        (out / METRICS).unlink(missing_ok=True)
        (out / STATE).unlink(missing_ok=True)
    atomic_write_text(out / CONFIG, dump_config(config))
    status = {"status": "running", "round": sim.state.round_idx, "rounds": config.fl.rounds}
    atomic_write_text(out / STATUS, json.dumps(status))
    try:
        with open(out / METRICS, "a") as mf:
            while not sim.done:
                m = sim.step()
                r = sim.state.round_idx
                if m is not None:
                    mf.write(json.dumps(m) + "\n")
                    mf.flush()
                    os.fsync(mf.fileno())
                if r % config.fl.checkpoint_every == 0 or sim.done:
                    save_state(out / STATE, sim.state)
                if on_round is not None:
                    on_round(r, m)
    except DivergedError as e:
        status.update(status="diverged", round=e.round_num, message=str(e))
        atomic_write_text(out / STATUS, json.dumps(status))
        return "diverged"
    status.update(status="finished", round=sim.state.round_idx)
    atomic_write_text(out / STATUS, json.dumps(status))
    return "finished"
