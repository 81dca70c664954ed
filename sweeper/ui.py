"""`fl-sweep ui`: the MLflow dashboard of a sweep, as a server this command owns.

`mlflow server` is a launcher: it starts uvicorn (and, by default, a Huey job consumer
with its worker processes for MLflow's GenAI jobs) as children and forwards only the
signals it receives itself. Killed or stopped any other way, it leaves them running
(seen: the server and 7 job workers, about one core while idle). So:

- only what a read-only dashboard needs is started: one uvicorn worker, and no job
  execution (`MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false`; the sweeper runs no MLflow jobs);
- the server runs in its own session (process group); on Ctrl-C, SIGTERM or SIGHUP, or
  when the server exits by itself, the whole group and every descendant is sent SIGTERM,
  then SIGKILL after a grace period, and `serve` returns only once none is left.

Two sweeps get no server: one tracked by a remote MLflow server (http(s) tracking URI)
already has its dashboard there, so its addresses are printed (`remote_base`); one whose
sqlite store is gone is refused (`require_store`), since `mlflow server` would create an
empty store in its place and serve that.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping

GRACE_S = 10.0
# what the dashboard does not need: MLflow's background job runner (Huey consumer + workers)
QUIET_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
             "MLFLOW_SERVER_JOB_ENABLE_PERIODIC_TASKS": "false"}


def server_command(sweep_dir: Path, manifest: Mapping[str, Any], host: str, port: int,
                   workers: int = 1) -> list[str]:
    """`mlflow server` on the sweep's store. New experiments created from the UI get their
    artifacts under the sweep directory too (not ./mlartifacts wherever this runs)."""
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
           manifest["tracking_uri"], "--host", host, "--port", str(port),
           "--workers", str(workers)]
    if manifest["tracking_uri"].startswith("sqlite:"):
        cmd += ["--default-artifact-root", (Path(sweep_dir) / "artifacts").as_uri()]
    return cmd


def remote_base(tracking_uri: str) -> str | None:
    """The dashboard of a sweep tracked by an MLflow server: the server's own address
    (scheme, host, port and path prefix; no credentials, query or fragment), ending in
    `/`. None for a store this command serves itself (sqlite, a database)."""
    from urllib.parse import urlsplit, urlunsplit

    from sweeper.tracking import redact_uri

    parts = urlsplit(redact_uri(tracking_uri))
    if parts.scheme not in ("http", "https"):
        return None
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/") + "/", "", ""))


def local_base(host: str, port: int) -> str:
    """The address of the server `serve` starts, as a browser on this machine reaches it."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"http://{shown}:{port}/"


def landing_url(host: str, port: int, manifest: Mapping[str, Any], base: str | None = None) -> str:
    """The sweep's experiment page as a researcher wants it first: every trial of this
    sweep listed by name, with its per-round curves on the charts. On the server at
    `base` (a remote one), else on the local one at `host`:`port`.

    - `workflowType`: without it MLflow 3 opens its GenAI pages (traces) for a browser
      that has not chosen "Model training" yet;
    - `searchFilter` on this sweep's trial runs (with an explicit `orderByKey`, else the
      UI drops the filter): without it the list shows the parent run collapsed and the
      charts are empty until its row is expanded;
    - `compareRunsMode=CHART`: the charts, not the table.
    """
    from urllib.parse import quote, urlencode

    from sweeper.tracking import trial_filter

    query = urlencode({
        "workflowType": "machine_learning",
        "compareRunsMode": "CHART",
        "searchFilter": trial_filter(manifest["name"]),
        "orderByKey": "metrics.`backdoor_acc`",
        "orderByAsc": "false",
    }, quote_via=quote)
    base = base or local_base(host, port)
    return f"{base}#/experiments/{manifest['experiment_id']}/runs?{query}"


def parent_url(host: str, port: int, manifest: Mapping[str, Any], base: str | None = None) -> str:
    """The sweep's parent run: its summary table, final metrics and report (`base` as in
    `landing_url`)."""
    base = base or local_base(host, port)
    return (f"{base}#/experiments/{manifest['experiment_id']}/runs/"
            f"{manifest['parent_run_id']}?workflowType=machine_learning")


class _Stop(Exception):
    """SIGINT/SIGTERM/SIGHUP, turned into an exception in the main thread."""


def _group(pgid: int, root: int) -> list:
    """Live processes of the server: its process group and its descendants (a child that
    made its own session still has the server as ancestor while the server lives)."""
    import psutil

    procs: dict[int, Any] = {}
    try:
        for p in psutil.Process(root).children(recursive=True):
            procs[p.pid] = p
    except psutil.NoSuchProcess:
        pass
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid:
                procs[p.pid] = p
        except (ProcessLookupError, psutil.NoSuchProcess, PermissionError):
            continue
    alive = []
    for p in procs.values():
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
        except psutil.NoSuchProcess:
            continue
    return alive


def stop(proc: subprocess.Popen, grace_s: float = GRACE_S) -> list[int]:
    """SIGTERM the server's group and descendants, SIGKILL what is left after `grace_s`;
    returns the pids found (for the caller's message and the tests)."""
    import psutil

    members = _group(proc.pid, proc.pid)
    pids = [p.pid for p in members]
    for p in members:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(members, timeout=grace_s)
    for p in alive + _group(proc.pid, proc.pid):
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=grace_s)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    return pids


def serve(cmd: list[str], echo: Callable[[str], None] = print) -> int:
    """Run the server until it exits or this process gets Ctrl-C/SIGTERM/SIGHUP; always
    leaves no process of the server behind. Returns the exit code for the CLI."""
    env = {**os.environ, **QUIET_ENV}

    def _raise(signum, _frame):
        raise _Stop(signum)

    # SIGINT too: a process started in the background by a shell inherits SIGINT ignored,
    # and Python then raises no KeyboardInterrupt
    old = {s: signal.signal(s, _raise) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    rc = 0
    try:
        rc = proc.wait()
    except (KeyboardInterrupt, _Stop):
        rc = 0
    finally:
        # ignore further signals while stopping: a second Ctrl-C must not orphan the group
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        t0 = time.monotonic()
        pids = stop(proc)
        echo(f"dashboard stopped ({len(pids)} server process(es) ended in "
             f"{time.monotonic() - t0:.1f} s)")
        for s, h in old.items():
            signal.signal(s, h)
    return rc
