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
"""

from __future__ import annotations

import json
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
        return (f"`fl-sweep {self.command}` on host {self.host}, pid {self.pid}, since {since} "
                f"(heartbeat {max(0.0, now - self.heartbeat):.0f}s ago)")

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


def read_holder(sweep_dir: Path) -> Holder | None:
    """The last holder recorded in driver.json, or None (no file, or unreadable)."""
    try:
        d: dict[str, Any] = json.loads((Path(sweep_dir) / INFO_FILE).read_text(encoding="utf-8"))
        return Holder(str(d["host"]), int(d["pid"]), str(d.get("command", "?")),
                      float(d["since"]), float(d["heartbeat"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


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

        fd = os.open(self.sweep_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = read_holder(self.sweep_dir)
            who = holder.describe() if holder else "another process (no driver.json yet)"
            raise SweeperError(
                f"sweep {self.sweep_dir.name} is being driven by {who}; wait for it to end or "
                "stop it (Ctrl-C) first — two drivers would run the same trials twice"
            ) from None
        except OSError as e:
            os.close(fd)
            raise SweeperError(f"{self.sweep_dir / LOCK_FILE}: cannot lock ({e.strerror})") from None
        previous = read_holder(self.sweep_dir)
        me = socket.gethostname()
        if previous is not None and previous.host != me and not previous.stale():
            # flock is not shared across hosts on this file system: trust the heartbeat
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            raise SweeperError(
                f"sweep {self.sweep_dir.name} is being driven by {previous.describe()}; wait "
                f"for it to end, or if that host is down, retry after {STALE_S:.0f}s without "
                "a heartbeat"
            )
        if previous is not None and previous.pid != os.getpid():
            self.taken_over = previous
        self._fd = fd
        self._since = time.time()
        self._write()
        self._thread = threading.Thread(target=self._beat, name="sweep-lock-heartbeat", daemon=True)
        self._thread.start()
        return self

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
