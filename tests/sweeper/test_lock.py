"""One driver per sweep (sweeper.lock): a live holder in another process is refused
with its host, pid and start named; a killed holder's lock is taken over; a holder on
another host with a fresh heartbeat is refused even where flock is not shared; two
`run` of one name end in one SweeperError, not a FileExistsError. Real processes, no
Ray: `resume` takes the lock before it starts Ray."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sweeper import storage as st
from sweeper.errors import SweeperError
from sweeper.lock import INFO_FILE, STALE_S, SweepLock, read_holder

REPO = Path(__file__).resolve().parents[2]

HOLD = """
import sys, time
from pathlib import Path
from sweeper.lock import SweepLock
lock = SweepLock(Path(sys.argv[1]), "resume", heartbeat_s=0.2).acquire()
print("held", flush=True)
time.sleep(600)
"""


def _holder(sweep: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(sweep)], stdout=subprocess.PIPE, text=True, env=env)
    assert p.stdout.readline().strip() == "held"
    return p


def _sweep(tmp_path: Path, name: str = "s1") -> Path:
    d = tmp_path / name
    d.mkdir()
    st.write_json(d / st.MANIFEST, {"name": name, "tracking_uri": "sqlite:///" + str(d / "mlflow.db"),
                                    "experiment_id": "1", "parent_run_id": "0" * 32,
                                    "trials": [], "num_trials": 0})
    return d


def test_a_live_holder_in_another_process_is_refused_and_named(tmp_path):
    sweep = _sweep(tmp_path)
    p = _holder(sweep)
    try:
        with pytest.raises(SweeperError) as e:
            SweepLock(sweep, "resume").acquire()
        msg = str(e.value)
        assert f"pid {p.pid}" in msg and socket.gethostname() in msg and "since" in msg
        # the heartbeat thread refreshes driver.json while it holds the lock
        first = read_holder(sweep).heartbeat
        time.sleep(0.6)
        assert read_holder(sweep).heartbeat > first
        # the CLI: exit 2, one line naming the holder, before any Ray start
        from sweeper.cli import main

        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = main(["resume", str(sweep)])
        assert rc == 2 and f"pid {p.pid}" in err.getvalue()
        # what `status` shows: the live driver, not stale
        assert read_holder(sweep).pid == p.pid and not read_holder(sweep).stale()
    finally:
        p.kill()
        p.wait()


def test_a_killed_holder_is_recognised_and_taken_over(tmp_path):
    sweep = _sweep(tmp_path)
    p = _holder(sweep)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    # the kernel dropped its flock; driver.json still names it, and it is known dead
    left = read_holder(sweep)
    assert left is not None and left.pid == p.pid and left.stale()
    lock = SweepLock(sweep, "resume").acquire()
    try:
        assert lock.taken_over is not None and lock.taken_over.pid == p.pid
        assert read_holder(sweep).pid == os.getpid()
    finally:
        lock.release()
    assert read_holder(sweep) is None  # released: driver.json gone


def test_a_fresh_heartbeat_from_another_host_is_refused_a_stale_one_taken_over(tmp_path):
    """Where flock is not shared between hosts (some NFS), the heartbeat decides."""
    sweep = _sweep(tmp_path)
    now = time.time()
    info = {"host": "other-host.example", "pid": 4242, "command": "run", "since": now - 100, "heartbeat": now - 1}
    (sweep / INFO_FILE).write_text(json.dumps(info))
    with pytest.raises(SweeperError) as e:
        SweepLock(sweep, "resume").acquire()
    assert "other-host.example" in str(e.value) and "pid 4242" in str(e.value)
    info["heartbeat"] = now - STALE_S - 5
    (sweep / INFO_FILE).write_text(json.dumps(info))
    with SweepLock(sweep, "resume") as lock:
        assert lock.taken_over.host == "other-host.example"


def test_two_runs_of_one_name_one_wins_the_other_gets_a_clear_error(tmp_path):
    d = tmp_path / "sweeps" / "same"
    st.create_sweep_dir(d)
    with pytest.raises(SweeperError) as e:
        st.create_sweep_dir(d)
    assert "already exists" in str(e.value) and "--name NEW" in str(e.value)


def test_two_concurrent_resume_processes_only_one_gets_the_lock(tmp_path):
    """Two processes race for the lock at once: exactly one holds it."""
    sweep = _sweep(tmp_path)
    code = ("import sys, time; from pathlib import Path; from sweeper.lock import SweepLock\n"
            "from sweeper.errors import SweeperError\n"
            "try:\n    l = SweepLock(Path(sys.argv[1]), 'resume').acquire(); print('got', flush=True); time.sleep(600)\n"
            "except SweeperError as e:\n    print('refused', flush=True)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(sweep)], stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    try:
        outs = sorted(p.stdout.readline().strip() for p in procs)  # the holder keeps holding
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert outs == ["got", "refused"]
