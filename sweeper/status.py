"""A sweep's state for `fl-sweep status`: its manifest, its MLflow store and its lock.

Reads only (no Ray): the trial table comes from the manifest, each trial's state,
round and accuracies from its MLflow child run, the driver from `driver.json`. A sweep
whose sqlite store is missing is reported as such; opening it would create an empty one.
sweep.json and driver.json are read by the guarded readers (sweeper.storage, sweeper.lock):
a damaged one is one line naming it, exit 2.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sweeper import storage as st
from sweeper.errors import SweeperError
from sweeper.lock import Holder, read_holder


def duration_text(s: float | None) -> str:
    """Seconds as `1h05m` or `4m09s` (an ETA); `-` when unknown."""
    if s is None:
        return "-"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{sec:02d}s"


@dataclass
class TrialStatus:
    index: int
    trial_key: str
    overrides: dict[str, Any]
    state: str                      # pending | running | finished | diverged | failed
    round: int
    rounds: int
    main_acc: float | None = None
    backdoor_acc: float | None = None
    run_id: str | None = None
    round_seconds: float | None = None


@dataclass
class SweepStatus:
    sweep_dir: Path
    manifest: dict[str, Any]
    trials: list[TrialStatus]
    parent_status: str | None = None
    driver: Holder | None = None    # the driver holding (or last holding) the sweep's lock

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.trials:
            out[t.state] = out.get(t.state, 0) + 1
        return out

    def eta_seconds(self) -> float | None:
        """Remaining rounds × mean seconds per round ÷ trials that can run at once; None
        when nothing has been timed yet or nothing remains."""
        live = [t for t in self.trials if t.state in ("pending", "running")]
        timed = [t.round_seconds for t in self.trials if t.round_seconds]
        if not live or not timed:
            return None
        remaining = sum(t.rounds - t.round for t in live)
        per_round = sum(timed) / len(timed)
        running = sum(t.state == "running" for t in self.trials)
        parallel = max(1, running, min(len(live), self.manifest.get("max_concurrent_trials") or 1))
        return remaining * per_round / parallel


def sweep_status(ref: str, storage: str | None = None) -> SweepStatus:
    """Read a sweep's state from its manifest and MLflow store (no Ray needed).

    Raises:
        SweeperError: no such sweep, its sweep.json or driver.json is damaged, or its sqlite
            store is missing (never re-created here).
    """
    from sweeper.tracking import ROLE, STATUS, TRIAL_KEY, Tracker, require_store

    sweep_dir = st.resolve_sweep(ref, storage)
    man = st.read_manifest(sweep_dir)
    trials = man["trials"]  # its files first: a damaged one is named before MLflow starts
    driver = read_holder(sweep_dir)
    require_store(man, "status")
    tracker = Tracker(man["tracking_uri"], read_only=True)
    runs = {r.data.tags.get(TRIAL_KEY): r for r in
            tracker.child_runs(man["experiment_id"], man["parent_run_id"])
            if r.data.tags.get(ROLE) == "trial"}
    parent = tracker.get_run(man["parent_run_id"])
    out = []
    for t in trials:
        r = runs.get(t["trial_key"])
        if r is None:
            out.append(TrialStatus(t["index"], t["trial_key"], t["overrides"], "pending", 0, t["rounds"]))
            continue
        m = r.data.metrics
        out.append(TrialStatus(
            t["index"], t["trial_key"], t["overrides"], r.data.tags.get(STATUS, "running"),
            int(m.get("round", 0)), t["rounds"], m.get("main_acc"), m.get("backdoor_acc"),
            r.info.run_id, m.get("round_seconds"),
        ))
    return SweepStatus(sweep_dir, man, out, parent.data.tags.get(STATUS), driver)
