"""What `fl-sweep run`/`resume` show while trials run: a Ray Tune callback on the driver.

On a terminal: one live `rich` table, one row per trial (round, accuracies, state,
ETA), redrawn in place; `main_acc_clean` and `collateral_rate` get columns once a trial
reports them. Elsewhere (CI, `ray job submit` logs, a pipe): plain lines, about 20 per
trial whatever its length, for evaluated rounds only, and one line per ended trial.
Tune's own table is off (with whole configs in the param space it is unreadable).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ray import tune
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from sweeper.status import duration_text as _dur

OPTIONAL = ("main_acc_clean", "collateral_rate")  # shown when some trial reports them
ENDED = ("finished", "diverged", "FAILED")


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def _label(t: dict) -> str:
    """The trial's varied keys in the report's notation (the MLflow run name); the key's
    first 8 hex digits for sweeps started before trials carried a name, or when none varies."""
    return t.get("name") or t["trial_key"][:8]


@dataclass
class _Row:
    index: int
    key: str
    rounds: int = 0
    round: int = 0
    state: str = "running"
    metrics: dict[str, Any] = field(default_factory=dict)
    t0: float | None = None      # wall time and round of this driver's first report
    r0: int = 0
    t_last: float | None = None

    def eta(self) -> float | None:
        if self.state != "running" or self.t0 is None or self.t_last is None or self.round <= self.r0:
            return None
        per_round = (self.t_last - self.t0) / (self.round - self.r0)
        return per_round * max(0, self.rounds - self.round)


class Progress(tune.Callback):
    """Driver-side progress of a sweep; `live=None` decides from the console (a terminal
    gets the live table)."""

    def __init__(self, total: int, live: bool | None = None, console: Console | None = None):
        self.total = total
        self.done = 0
        self.console = console or Console()
        self.live = self.console.is_terminal if live is None else live
        self.rows: dict[int, _Row] = {}
        self.optional: list[str] = []
        self.failed: list[str] = []
        self._live: Live | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its RunConfig (with the callbacks) into the experiment state
        return {**self.__dict__, "console": None, "_live": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.console = Console()

    # -- bookkeeping -----------------------------------------------------------------
    def _row(self, trial: Any) -> _Row:
        t = trial.config["trial"]
        row = self.rows.get(t["index"])
        if row is None:
            row = self.rows[t["index"]] = _Row(t["index"], _label(t))
        return row

    @staticmethod
    def _name(trial: Any) -> str:
        t = trial.config["trial"]
        return f"trial {t['index']:>3} [{_label(t)}]"

    def _update(self) -> None:
        if not self.live:
            return
        if self._live is None:
            self._live = Live(self.render(), console=self.console, refresh_per_second=2,
                              transient=False)
            self._live.start()
        else:
            self._live.update(self.render())

    def stop(self) -> None:
        if self._live is not None:
            self._live.update(self.render())
            self._live.stop()
            self._live = None
            for path in self.failed:
                self.console.print(Text(f"FAILED trial: see {path}/error.txt"))

    # -- the table ---------------------------------------------------------------------
    def render(self) -> Group:
        table = Table(show_edge=False, pad_edge=False)
        for col in ("#", "trial", "round", "main_acc", "backdoor_acc", *self.optional, "state", "ETA"):
            table.add_column(col, justify="left" if col in ("trial", "state") else "right")
        # running trials first, then the ended ones; as many as the terminal shows
        rows = sorted(self.rows.values(), key=lambda r: (r.state in ENDED, r.index))
        room = max(3, self.console.height - 6)
        for r in rows[:room]:
            table.add_row(str(r.index), r.key, f"{r.round}/{r.rounds}",
                          *[_fmt(r.metrics.get(k)) for k in ("main_acc", "backdoor_acc", *self.optional)],
                          escape(r.state), _dur(r.eta()))
        counts: dict[str, int] = {}
        for r in self.rows.values():
            counts[r.state] = counts.get(r.state, 0) + 1
        pending = self.total - len(self.rows)
        if pending > 0:
            counts["pending"] = pending
        more = f" ({len(rows) - room} more not shown)" if len(rows) > room else ""
        footer = Text(f"{self.done}/{self.total} trials ended: "
                      + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) + more)
        return Group(table, footer)

    # -- Tune's hooks ------------------------------------------------------------------
    def on_trial_result(self, iteration, trials, trial, result, **info):
        row = self._row(trial)
        now = time.time()
        r = int(result.get("round") or 0)
        row.rounds = int(result.get("rounds_total") or row.rounds)
        if row.t0 is None:
            row.t0, row.r0 = now, r
        row.t_last, row.round = now, r
        status = result.get("fl_status")
        if status in ("finished", "diverged"):
            row.state = status
        evaluated = result.get("main_acc") is not None
        if evaluated:
            row.metrics.update({k: result.get(k) for k in ("main_acc", "backdoor_acc", *OPTIONAL)
                                if result.get(k) is not None})
            self.optional = [k for k in OPTIONAL if k in self.optional or result.get(k) is not None]
        if self.live:
            self._update()
            return
        # plain lines: evaluated rounds only, about 20 per trial whatever its length
        if status == "diverged" or not evaluated or (r % max(1, row.rounds // 20) and r != row.rounds):
            return
        extra = "".join(f"  {k} {_fmt(result.get(k))}" for k in OPTIONAL if result.get(k) is not None)
        print(f"{self._name(trial)} round {r}/{row.rounds}"
              f"  main_acc {_fmt(result.get('main_acc'))}"
              f"  backdoor_acc {_fmt(result.get('backdoor_acc'))}{extra}", flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.done += 1
        row = self._row(trial)
        res = trial.last_result or {}
        status = res.get("fl_status", "finished")
        row.state = status if status in ENDED else "finished"
        if self.live:
            self._update()
            return
        extra = f" ({res.get('error')})" if status == "diverged" else ""
        print(f"{self._name(trial)} {status}{extra}  [{self.done}/{self.total} trials ended]",
              flush=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.done += 1
        self._row(trial).state = "FAILED"
        self.failed.append(str(trial.path))
        if self.live:
            self._update()
            return
        print(f"{self._name(trial)} FAILED: see {trial.path}/error.txt  "
              f"[{self.done}/{self.total} trials ended]", flush=True)

    def on_experiment_end(self, trials, **info):
        self.stop()
