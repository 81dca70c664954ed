"""One simulation in a local output directory (what `fl-sweep simulate` runs): the
directory sink of `fl_core.loop.run_loop`.

DIR/config.yaml    the fully resolved config
DIR/metrics.jsonl  one JSON object per evaluated round, appended and fsynced as rounds end
DIR/state.pt       the SimulationState, every fl.checkpoint_every rounds and at the end
DIR/status.json    running | finished | diverged | failed, with the round reached

Resume loads state.pt and first rewrites metrics.jsonl (atomically) as
`fl_core.loop.resume_history` says: the lines up to the checkpoint's round (a line cut short
by a crash is dropped), with any row the checkpoint covers but the file lost restored from
the checkpoint, so the file equals that of a run that never stopped and the re-run rounds
are logged exactly once. A fresh run refuses a directory that already holds any of these
files unless `force` (it would overwrite another run's results).

A write that fails (disk full, quota, I/O error: any OSError) stops the run with
`RunWriteError`, naming the file; status.json then says `failed` with the round of the last
checkpoint, which `--resume` continues from once the cause is fixed (if even status.json
cannot be written, the message says so).
"""

from __future__ import annotations

import contextlib
import errno
import json
from pathlib import Path
from typing import Callable, Iterator

from fl_core.config import SimulationConfig
from fl_core.errors import DivergedError
from fl_core.loop import resume_history, run_loop
from fl_core.simulate import Simulation
from fl_core.state import SimulationState, load_state, save_state
from sweeper.configio import dump_config
from sweeper.errors import SweeperError
from sweeper.jsonl import append_row, read_jsonl, write_jsonl
from sweeper.rundir import CONFIG, METRICS, STATE, STATUS  # noqa: F401 (re-exported)
from sweeper.storage import atomic_write_text


class RunWriteError(SweeperError):
    """Writing the run directory failed (disk full, quota, I/O error): the run stopped, and
    continues from its last checkpoint with `--resume` once the cause is fixed."""


class _WriteFailed(Exception):
    """An OSError while writing `path` (internal: `run_local` turns it into RunWriteError)."""

    def __init__(self, path: Path, error: OSError):
        super().__init__(path, error)
        self.path, self.error = path, error


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """Name the file an OSError was writing (an error from `write` or `fsync` names none,
    one from an atomic write names its temp file)."""
    try:
        yield
    except OSError as e:
        raise _WriteFailed(path, e) from e


def _os_error_text(e: OSError) -> str:
    code = errno.errorcode.get(e.errno, "") if e.errno else ""
    return f"{e.strerror or e}" + (f" ({code})" if code else "")


def resume_metrics(path: Path, state: SimulationState) -> list[dict]:
    """Rewrite `path` (atomically) as the history up to the checkpoint `state`
    (`fl_core.loop.resume_history`); returns it. `read_jsonl` refuses a row whose `round`
    is not an integer (exit 2), so none is compared."""
    kept = resume_history(read_jsonl(path), state)
    write_jsonl(path, kept)
    return kept


class _Appender:
    """metrics.jsonl opened for appending, unbuffered: a failed write raises at once (a
    buffered file keeps the unwritten bytes and fails again when closed); a short write
    leaves a cut last line, which a resume drops. Each row is fsynced before the run goes on."""

    def __init__(self, path: Path):
        self.path = path
        self.f = open(path, "ab", buffering=0)

    def append(self, row: dict) -> None:
        append_row(self.f, row)

    def close(self) -> None:
        self.f.close()


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
    """Writes a run into `out` (see the module docstring); `on_round` is the caller's.
    `checkpointed` is the round of the last checkpoint on disk (what a resume continues
    from), None before the first."""

    def __init__(self, out: Path, status: dict, metrics: _Appender,
                 on_round: Callable[[int, dict | None], None] | None = None,
                 checkpointed: int | None = None):
        self.out, self.status, self.metrics, self.callback = out, status, metrics, on_round
        self.checkpointed = checkpointed

    def on_round(self, round_num: int, metrics: dict | None, checkpoint_due: bool) -> None:
        if metrics is not None:
            with _writing(self.metrics.path):
                self.metrics.append(metrics)
        if self.callback is not None:
            self.callback(round_num, metrics)

    def on_checkpoint(self, state: SimulationState, history: list[dict]) -> None:
        with _writing(self.out / STATE):
            save_state(self.out / STATE, state)
        self.checkpointed = state.round_idx

    def on_end(self, status: str, state: SimulationState, history: list[dict],
               error: DivergedError | None) -> None:
        if error is not None:
            self.status.update(status=status, round=error.round_num, message=str(error))
        else:
            self.status.update(status=status, round=state.round_idx)
        with _writing(self.out / STATUS):
            atomic_write_text(self.out / STATUS, json.dumps(self.status))


def _record_failure(out: Path, status: dict, failed: _WriteFailed, checkpointed: int | None) -> RunWriteError:
    """status.json := failed (best effort), and the one-line error to raise."""
    when = "once writes succeed again, e.g. after freeing disk space"
    where = (f"`fl-sweep simulate --resume --out {out}` continues it from its checkpoint at round "
             f"{checkpointed} {when}" if checkpointed is not None
             else f"no checkpoint was written yet: run it again with --force {when}")
    problem = f"{failed.path}: write failed: {_os_error_text(failed.error)}"
    status = {**status, "status": "failed", "round": checkpointed or 0, "message": problem}
    try:
        atomic_write_text(out / STATUS, json.dumps(status))
        recorded = f"{out / STATUS} says failed"
    except OSError as e:
        recorded = f"{out / STATUS} could not be written either ({_os_error_text(e)}): it does not say failed"
    return RunWriteError(f"{problem}; the run stopped and {recorded}; {where}")


def run_local(
    config: SimulationConfig,
    out: Path,
    resume: bool = False,
    on_round: Callable[[int, dict | None], None] | None = None,
    force: bool = False,
) -> str:
    """Run (or resume) to config.fl.rounds in `out`; returns the final status.

    Raises:
        RunWriteError: a write in `out` failed (status.json then says failed).
    """
    if not resume:
        check_fresh_out(out, force)
    state = load_state(out / STATE, config) if resume else None
    # Build (and so validate against the data) before anything is written.
    sim = Simulation(config, state=state)
    checkpointed = state.round_idx if state is not None else None
    status = {"status": "running", "round": sim.state.round_idx, "rounds": config.fl.rounds}
    sink = None
    try:
        with _writing(out):
            out.mkdir(parents=True, exist_ok=True)
        history: list[dict] = []
        if resume:
            with _writing(out / METRICS):
                history = resume_metrics(out / METRICS, state)
        else:
            for name in (METRICS, STATE):
                with _writing(out / name):
                    (out / name).unlink(missing_ok=True)
        with _writing(out / CONFIG):
            atomic_write_text(out / CONFIG, dump_config(config))
        with _writing(out / STATUS):
            atomic_write_text(out / STATUS, json.dumps(status))
        with _writing(out / METRICS):
            appender = _Appender(out / METRICS)
        sink = DirectorySink(out, status, appender, on_round, checkpointed)
        try:
            result = run_loop(sim, sink, history)
        except BaseException:
            with contextlib.suppress(OSError):  # the error that stopped the run is the one to tell
                appender.close()
            raise
        with _writing(out / METRICS):
            appender.close()
        return result
    except _WriteFailed as failed:
        raise _record_failure(out, status, failed, sink.checkpointed if sink else checkpointed) from failed.error
