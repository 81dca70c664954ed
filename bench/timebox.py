"""Run one benchmark step as a child process with a wall-clock limit, echoing its output
live and keeping it: a step that hangs or dies must not take the others' results with it
(the GPU machine is lent for minutes, so every step is time-boxed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Sequence, TextIO


@dataclass
class StepRun:
    """What a time-boxed child did: exit code (None when it was killed at its limit)."""

    returncode: int | None
    seconds: float
    timed_out: bool
    lines: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


def run_limited(cmd: Sequence[str], limit_s: float, echo: TextIO | None = sys.stdout,
                env: dict[str, str] | None = None, cwd: str | None = None) -> StepRun:
    """Run `cmd`; after `limit_s` seconds SIGTERM its process group, 5 s later SIGKILL.

    stdout and stderr are merged, echoed line by line to `echo` (prefixed by nothing: the
    child's own lines) and returned, so the caller can parse machine-readable lines."""
    t0 = time.monotonic()
    proc = subprocess.Popen(
        list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}, cwd=cwd,
        start_new_session=True,  # its own process group: the kill reaches its children too
    )
    lines: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if echo is not None:
                echo.write(line)
                echo.flush()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    timed_out = False
    try:
        proc.wait(timeout=max(limit_s, 0.1))
    except subprocess.TimeoutExpired:
        timed_out = True
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()
    reader.join(timeout=5)
    return StepRun(None if timed_out else proc.returncode, time.monotonic() - t0, timed_out, lines)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
