"""One driver per sweep: the lock that `fl-sweep run` and `resume` hold.

Two drivers on one sweep would drive the same trials into the same MLflow runs. The
lock is two files in the sweep directory:

    driver.lock   flock(2)ed, exclusively and without waiting, for the driver's lifetime.
                  The kernel drops the lock when the process dies, however it dies, so a
                  killed driver never leaves a lock that blocks the next one.
    driver.json   who holds it: host, pid, start time, and a heartbeat a thread rewrites
                  every HEARTBEAT_S seconds (atomically). `status` shows it; a second
                  driver's error names it.

flock alone is not enough on file systems where it is not shared between hosts (some
NFS set-ups lock per client): there a driver on another host with a fresh heartbeat
(younger than STALE_S) still refuses the lock. A heartbeat older than STALE_S is a
driver that died without its lock being released (a host that went down): taken over.

driver.json is read back like every file (fl_core.safeio): bounded, and validated (a
finite time, a pid the OS can hold); a damaged one is a one-line error naming it. A
heartbeat more than FUTURE_S ahead of this host's clock cannot be judged (the hosts'
clocks differ by more than that, or the file was edited): waiting would never make it
stale, so the error says how to take over instead of "retry later".
"""

from __future__ import annotations

import functools
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sweeper.errors import SweeperError

LOCK_FILE = "driver.lock"
INFO_FILE = "driver.json"
HEARTBEAT_S = 10.0
STALE_S = 60.0
FUTURE_S = 300.0  # clocks of one cluster agree far better (NTP); beyond this: untrustworthy
INFO_MAX_BYTES = 64 << 10
INFO_SHAPE = ("the JSON object a driver writes: host (text), pid (integer 1..2^31-1), "
              "command (text), since and heartbeat (seconds since 1970)")


@dataclass(frozen=True)
class Holder:
    """Who holds (or last held) a sweep's lock, from driver.json."""

    host: str
    pid: int
    command: str
    since: float
    heartbeat: float

    def describe(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        ahead = self.heartbeat - now
        beat = (f"heartbeat {ahead:.0f}s in the future" if ahead > FUTURE_S
                else f"heartbeat {max(0.0, -ahead):.0f}s ago")
        return f"`fl-sweep {self.command}` on host {self.host}, pid {self.pid}, since {since} ({beat})"

    def untrustworthy(self, now: float | None = None) -> bool:
        """A heartbeat more than FUTURE_S ahead of this clock: it never goes stale."""
        now = time.time() if now is None else now
        return self.heartbeat - now > FUTURE_S

    def stale(self, now: float | None = None) -> bool:
        """No heartbeat for STALE_S, or (on this host) its process has ended."""
        now = time.time() if now is None else now
        if self.host == socket.gethostname():
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                pass  # alive, another user's
        return now - self.heartbeat > STALE_S


@functools.cache
def _info_schema() -> type:
    """driver.json's schema, built on first use (pydantic stays out of CLI start-up)."""
    from pydantic import BaseModel, ConfigDict, Field

    printable = r"^[^\x00-\x1f\x7f]+$"

    class DriverInfo(BaseModel):
        model_config = ConfigDict(strict=True, extra="allow", allow_inf_nan=False)

        host: str = Field(min_length=1, max_length=255, pattern=printable)
        pid: int = Field(ge=1, le=2**31 - 1)
        command: str = Field("?", min_length=1, max_length=64, pattern=printable)
        # seconds since 1970, up to the year 2286: what time.localtime can show
        since: float = Field(ge=0, le=1e10)
        heartbeat: float = Field(ge=0, le=1e10)

    return DriverInfo


def read_holder(sweep_dir: Path) -> Holder | None:
    """The last holder recorded in driver.json, or None when there is none.

    Raises:
        SweepFileError: driver.json is damaged (not a file, not JSON, a pid or time out of
            range); the message says how to go on.
    """
    from fl_core import safeio
    from sweeper.storage import SweepFileError

    p = Path(sweep_dir) / INFO_FILE

    def error(file: str, problem: str) -> SweepFileError:
        return SweepFileError(file, problem, f"if no `fl-sweep run`/`resume` drives this sweep, "
                                             "move it away (the sweeper writes it anew) and retry")

    try:
        info = safeio.read_json(p, _info_schema(), max_bytes=INFO_MAX_BYTES, expected=INFO_SHAPE,
                                error=error, what="a driver.json")
    except FileNotFoundError:
        return None
    return Holder(info.host, info.pid, info.command, info.since, info.heartbeat)


class SweepLock:
    """`with SweepLock(sweep_dir, "run"):` hold the sweep's driver lock, or raise
    SweeperError naming the holder."""

    def __init__(self, sweep_dir: Path, command: str, heartbeat_s: float = HEARTBEAT_S):
        self.sweep_dir = Path(sweep_dir)
        self.command = command
        self.heartbeat_s = heartbeat_s
        self.taken_over: Holder | None = None
        self._fd: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._since = 0.0

    def acquire(self) -> "SweepLock":
        import fcntl

        from sweeper.storage import SweepFileError

        lock_path = self.sweep_dir / LOCK_FILE
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as e:  # a directory, a dangling or looping link, no permission
            raise SweeperError(
                f"{lock_path}: cannot open the sweep's lock file ({e.strerror or e}); it must be "
                "a plain file the sweeper creates: move whatever is there away and retry") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            try:
                holder = read_holder(self.sweep_dir)
            except SweepFileError as e:
                holder, unread = None, f" (its {INFO_FILE} is damaged: {e.problem})"
            else:
                unread = " (no driver.json yet)"
            who = holder.describe() if holder else f"another process{unread}"
            raise SweeperError(
                f"sweep {self.sweep_dir.name} is being driven by {who}; wait for it to end or "
                "stop it (Ctrl-C) first — two drivers would run the same trials twice"
            ) from None
        except OSError as e:
            os.close(fd)
            raise SweeperError(f"{self.sweep_dir / LOCK_FILE}: cannot lock ({e.strerror})") from None
        try:
            self.taken_over = self._check_previous()
            self._since = time.time()
            self._write()
        except BaseException:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            raise
        self._fd = fd
        self._thread = threading.Thread(target=self._beat, name="sweep-lock-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _check_previous(self) -> Holder | None:
        """The previous holder we take over (None: none, or this process), once we hold the
        flock; SweeperError when driver.json says another host may still drive the sweep."""
        previous = read_holder(self.sweep_dir)
        if previous is not None and previous.host != socket.gethostname():
            # flock may not be shared across hosts on this file system: trust the heartbeat
            info = self.sweep_dir / INFO_FILE
            if previous.untrustworthy():
                raise SweeperError(
                    f"sweep {self.sweep_dir.name}: {info} names {previous.describe()}: more than "
                    f"{FUTURE_S:.0f}s ahead of this host's clock (the hosts' clocks differ, or the "
                    "file was edited), so it never goes stale; if no `fl-sweep` drives this sweep "
                    f"on {previous.host}, move {info} away and retry"
                )
            if not previous.stale():
                raise SweeperError(
                    f"sweep {self.sweep_dir.name} is being driven by {previous.describe()}; wait "
                    f"for it to end, or if that host is down, retry after {STALE_S:.0f}s without "
                    "a heartbeat"
                )
        return previous if previous is not None and previous.pid != os.getpid() else None

    def _write(self) -> None:
        from sweeper.storage import write_json

        write_json(self.sweep_dir / INFO_FILE, {
            "host": socket.gethostname(), "pid": os.getpid(), "command": self.command,
            "since": self._since, "heartbeat": time.time(),
        })

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self._write()
            except OSError:
                pass  # a full or vanished disk: the next beat tries again

    def release(self) -> None:
        if self._fd is None:
            return
        import fcntl

        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            (self.sweep_dir / INFO_FILE).unlink(missing_ok=True)
        except OSError:
            pass
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "SweepLock":
        return self.acquire() if self._fd is None else self

    def __exit__(self, *exc: Any) -> None:
        self.release()
