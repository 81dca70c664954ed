"""`fl-sweep ui` owns its MLflow server: a real server on a real sqlite store in a tmp
dir, stopped by SIGINT (Ctrl-C) or SIGTERM sent to `fl-sweep` alone, leaves no process
behind, and never starts MLflow's job runner (Huey consumer and workers). It starts no
server for a sweep whose store is gone (refused) or that a remote MLflow server tracks
(its addresses are printed) (issue 19)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from sweeper import storage as st
from sweeper.cli import main
from sweeper.tracking import Tracker, default_uri
from sweeper.ui import landing_url, parent_url

REPO = Path(__file__).resolve().parents[2]


def fl_sweep(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from sweeper.cli import main; sys.exit(main(sys.argv[1:]))",
            *args]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    """A sweep directory as `fl-sweep run` leaves it: manifest + store with an experiment."""
    d = tmp_path_factory.mktemp("ui") / "dash"
    tr = Tracker(default_uri(d))
    tr.init_store()
    exp = tr.experiment("dash", (d / "artifacts").as_uri())
    parent = tr.start_parent(exp, "dash", "ui test")
    st.write_json(d / st.MANIFEST, {"name": "dash", "tracking_uri": tr.uri, "experiment_id": exp,
                                    "parent_run_id": parent, "created": "now"})
    return d


def _wait_up(port: int, proc: subprocess.Popen, deadline_s: float = 120) -> dict:
    t0 = time.monotonic()
    while time.monotonic() - t0 < deadline_s and proc.poll() is None:
        try:
            with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get-by-name?experiment_name=dash",
                    timeout=2) as r:
                return json.loads(r.read())
        except OSError:
            time.sleep(0.5)
    out = proc.stdout.read().decode() if proc.poll() is not None and proc.stdout else ""
    raise AssertionError(f"the dashboard did not answer within {deadline_s}s: {out[-2000:]}")


def _tree(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ui_stops_its_server_and_every_process_it_started(sweep_dir, sig):
    port = _free_port()
    # a session of its own, so that the check below can also find a process that left
    # the server's process group; the signal goes to `fl-sweep` alone
    proc = subprocess.Popen(fl_sweep("ui", str(sweep_dir), "--port", str(port)),
                            env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        body = _wait_up(port, proc)
        assert body["experiment"]["name"] == "dash"
        tree = _tree(proc.pid)
        cmdlines = [" ".join(p.cmdline()) for p in tree]
        assert any("mlflow" in c and "server" in c for c in cmdlines), cmdlines
        # only what a read-only dashboard needs: no job runner, one web worker
        assert not any("huey" in c for c in cmdlines), cmdlines
        assert len(tree) <= 3, cmdlines  # launcher, uvicorn (and its one worker)
        os.kill(proc.pid, sig)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out.decode()[-2000:]
        assert "dashboard stopped" in out.decode()
        _, alive = psutil.wait_procs(tree, timeout=5)
        assert not alive, [(p.pid, p.cmdline()) for p in alive]
        left = [p for p in psutil.process_iter(["pid"]) if _sid(p.pid) == proc.pid]
        assert not left, [(p.pid, p.cmdline()) for p in left]
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        for p in psutil.process_iter():
            if _sid(p.pid) == proc.pid:
                p.kill()


def _sid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except (ProcessLookupError, PermissionError):
        return None


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture
def no_server(monkeypatch, tmp_path):
    """Fails the test if `ui` starts any process; runs it from an empty directory (where
    MLflow would put a default store)."""
    import sweeper.ui as dash

    def popen(*a, **k):
        raise AssertionError(f"fl-sweep ui started a process: {a} {k}")

    monkeypatch.setattr(dash.subprocess, "Popen", popen)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def _manifest(d: Path, uri: str) -> None:
    st.write_json(d / st.MANIFEST, {"name": d.name, "tracking_uri": uri, "experiment_id": "7",
                                    "parent_run_id": "abc123", "created": "now"})


@pytest.mark.parametrize("how", ["path", "name", "latest"])
def test_ui_refuses_a_sweep_whose_store_is_gone_and_creates_nothing(tmp_path, capsys, no_server, how):
    root = tmp_path / "sweeps"
    d = root / "gone"
    d.mkdir(parents=True)
    _manifest(d, default_uri(d))  # as `fl-sweep run` wrote it; mlflow.db since deleted
    before = _files(tmp_path)
    argv = {"path": [str(d)], "name": ["gone", "--storage", str(root)], "latest": ["--storage", str(root)]}[how]
    assert main(["ui", *argv]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert str(d / "mlflow.db") in err and "missing" in err and "will not create" in err
    assert _files(tmp_path) == before  # no empty store, no artifacts directory, nothing


@pytest.mark.parametrize("uri,base", [
    ("https://mlflow.example.org/team", "https://mlflow.example.org/team/"),
    ("http://10.0.0.5:5000", "http://10.0.0.5:5000/"),
    # a hand-edited manifest with credentials: they are not printed
    ("https://u:pw@mlflow.example.org/?token=t&x=1", "https://mlflow.example.org/"),
])
def test_ui_on_a_remote_server_prints_its_addresses_and_starts_nothing(tmp_path, capsys, no_server, uri, base):
    d = tmp_path / "remote"
    d.mkdir()
    _manifest(d, uri)
    before = _files(tmp_path)
    assert main(["ui", str(d), "--port", "5123"]) == 0
    out = capsys.readouterr()
    manifest = json.loads((d / st.MANIFEST).read_text())
    assert landing_url("x", 1, manifest, base=base) in out.out
    assert parent_url("x", 1, manifest, base=base) in out.out
    assert f"{base}#/experiments/7/runs?" in out.out and f"{base}#/experiments/7/runs/abc123?" in out.out
    assert "127.0.0.1" not in out.out and "5123" not in out.out
    assert "pw" not in out.out + out.err and "token" not in out.out + out.err
    assert _files(tmp_path) == before
