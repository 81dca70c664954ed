"""`fl-sweep run` killed with SIGKILL mid-sweep, then `fl-sweep resume`: every trial
finishes, every metric history and the final weights equal those of uninterrupted runs
bit for bit (CPU), every MLflow child run holds each round's step exactly once, and the
parent run is the same. Then `status`, `list` and `ui` on the result.

The driver is a real `fl-sweep` process with its own local Ray cluster. After SIGKILL of
the driver, the rest of its session (raylet, GCS, trial workers) is SIGKILLed too, as
when the machine dies: Ray's own teardown after a driver death takes ~30 s here and would
only make the test slower. The uninterrupted reference is each trial's config run
straight through by fl_core's `Simulation` in this process (the same computation an
uninterrupted trial makes; tests/sweeper/test_ray_cluster.py compares trials of one
sweep with each other)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from fl_core.config import parse_config
from fl_core.simulate import Simulation
from sweeper.grid import load_grid
from sweeper.tracking import PARENT, ROLE, STATUS, TRIAL_KEY, Tracker

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
ROUNDS = 8
GRID = f"""\
name: resume
description: kill -9 and resume
base:
  data: {{source: synthetic, num_writers: 12, examples_per_writer: 20}}
  fl: {{rounds: {ROUNDS}, clients_per_round: 5, local_epochs: 1, checkpoint_every: 3}}
  attack: {{kind: model-replacement, fraction: 0.2, frequency: 2, num_tasks: 3}}
grid:
  defense.norm_bound: [null, 2.0]
seeds: 2
resources: {{executor: in-process, cpus_per_trial: 1}}
max_concurrent_trials: 2
"""
TIMING = ("round_seconds", "eval_seconds", "aggregate_seconds")
LOCAL = ["--num-cpus", "2", "--object-store-mb", "150"]


def fl_sweep(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from sweeper.cli import main; sys.exit(main(sys.argv[1:]))",
            *args]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "250"}


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    """Runs the sweep, kills it, resumes it; yields what the tests inspect."""
    tmp = tmp_path_factory.mktemp("resume")
    grid = tmp / "grid.yaml"
    grid.write_text(GRID)
    storage = tmp / "sweeps"

    t0 = time.monotonic()
    log = open(tmp / "killed.log", "w")
    proc = subprocess.Popen(fl_sweep("run", str(grid), "--storage", str(storage), "--name", "killed", *LOCAL),
                            cwd=tmp, env=env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    db = storage / "killed" / "mlflow.db"
    at_kill = None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        # kill once some trial is past its first checkpoint (round 3) but short of the
        # second: the resumed trial must replay rounds 4.. without logging them twice
        steps = _max_steps(db)
        if steps and max(steps.values()) >= 4:
            at_kill = steps
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.1)
    proc.wait(timeout=30)
    _kill_session(proc.pid)
    log.close()
    assert at_kill is not None, (tmp / "killed.log").read_text()[-3000:]
    t_kill = time.monotonic() - t0

    t0 = time.monotonic()
    resumed = subprocess.run(fl_sweep("resume", "killed", "--storage", str(storage), *LOCAL),
                             cwd=tmp, env=env(), capture_output=True, text=True, timeout=400)
    t_resume = time.monotonic() - t0
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    print(f"\nrun until kill {t_kill:.0f}s, resume {t_resume:.0f}s; main_acc steps at kill: {at_kill}")
    return {"tmp": tmp, "storage": storage, "grid": grid, "at_kill": at_kill,
            "resume_out": resumed.stdout}


def _kill_session(sid: int) -> None:
    """SIGKILL every live process of session `sid` (the driver's: we started it with
    start_new_session), then wait until none is left (zombies aside: nothing reaps
    orphans in some containers)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        live = []
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            state, session = fields[0], int(fields[3])
            if session == sid and state != "Z":
                live.append(int(d.name))
        if not live:
            return
        for pid in live:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
    raise AssertionError(f"processes of session {sid} survived SIGKILL")


def _max_steps(db: Path) -> dict[str, int]:
    if not db.exists():
        return {}
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            rows = con.execute(
                "select run_uuid, max(step) from metrics where key='main_acc' group by run_uuid"
            ).fetchall()
    except sqlite3.Error:
        return {}
    return dict(rows)


def _runs(storage: Path, name: str):
    man = json.loads((storage / name / "sweep.json").read_text())
    tr = Tracker(man["tracking_uri"])
    runs = tr.client.search_runs([man["experiment_id"]], max_results=1000)
    return man, tr, runs


def _history(tr: Tracker, run) -> dict[str, list[tuple[int, float]]]:
    return {k: sorted((m.step, m.value) for m in tr.client.get_metric_history(run.info.run_id, k))
            for k in run.data.metrics}


def _reference(config: dict) -> tuple[dict[str, list[tuple[int, float]]], torch.Tensor]:
    """The trial's config run straight through, metrics as MLflow stores them."""
    cfg = parse_config(config)
    sim = Simulation(cfg)
    hist: dict[str, list[tuple[int, float]]] = {}
    while not sim.done:
        m = sim.step()
        for k, v in m.items():
            if v is not None and k not in TIMING:
                hist.setdefault(k, []).append((m["round"], float(v)))
    return hist, sim.state.global_params


def test_killed_then_resumed_sweep_equals_uninterrupted(sweeps):
    storage = sweeps["storage"]
    # really mid-sweep: some trial had not started or not finished
    assert len(sweeps["at_kill"]) < 4 or min(sweeps["at_kill"].values()) < ROUNDS
    man, tr, runs = _runs(storage, "killed")
    parents = [r for r in runs if r.data.tags.get(ROLE) == "parent"]
    assert [p.info.run_id for p in parents] == [man["parent_run_id"]]  # the same parent run
    assert parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get(ROLE) == "trial"]
    trials = {t.trial_key: t for t in load_grid(sweeps["grid"]).trials}
    assert len(children) == 4 and {c.data.tags[TRIAL_KEY] for c in children} == set(trials)

    for c in children:
        assert c.data.tags[PARENT] == man["parent_run_id"]
        assert c.info.status == "FINISHED" and c.data.tags[STATUS] == "finished"
        hist = _history(tr, c)
        for key, points in hist.items():  # each step at most once ...
            steps = [s for s, _ in points]
            assert steps == sorted(set(steps)), (key, points)
        assert [s for s, _ in hist["main_acc"]] == list(range(1, ROUNDS + 1))  # ... every round there
        want, want_w = _reference(trials[c.data.tags[TRIAL_KEY]].config.model_dump())
        assert {k: v for k, v in hist.items() if k not in TIMING} == want  # bit-identical
        w = torch.load(tr.client.download_artifacts(c.info.run_id, "final_weights.pt",
                                                    str(sweeps["tmp"] / f"w-{c.info.run_id}")))
        assert torch.equal(w, want_w)
        lines = Path(tr.client.download_artifacts(
            c.info.run_id, "metrics.jsonl", str(sweeps["tmp"] / f"m-{c.info.run_id}"))).read_text().splitlines()
        assert [json.loads(x)["round"] for x in lines] == list(range(1, ROUNDS + 1))
    assert "4 finished" in sweeps["resume_out"]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`fl-sweep ARGS` in this process (these commands start no Ray)."""
    import contextlib
    import io

    from sweeper.cli import main

    out, err = io.StringIO(), io.StringIO()
    old = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(list(args))
    finally:
        os.chdir(old)
    return subprocess.CompletedProcess(list(args), rc, out.getvalue(), err.getvalue())


def test_status_and_list(sweeps):
    storage = sweeps["storage"]
    st = _cli("status", "killed", "--storage", str(storage), cwd=sweeps["tmp"])
    assert st.returncode == 0, st.stderr
    assert "4 trials: 4 finished; rounds 32/32; ETA -" in st.stdout
    assert len(re.findall(rf"finished\s+│\s+{ROUNDS}/{ROUNDS}\s", st.stdout)) == 4
    assert "defense.norm_bound" in st.stdout
    # by path too
    st2 = _cli("status", str(storage / "killed"), cwd=sweeps["tmp"])
    assert st2.returncode == 0 and "4 finished" in st2.stdout
    ls = _cli("list", "--storage", str(storage), cwd=sweeps["tmp"])
    assert ls.returncode == 0
    assert "killed" in ls.stdout and "resume" in ls.stdout and str(sweeps["grid"]) in ls.stdout
    bad = _cli("status", "nope", "--storage", str(storage), cwd=sweeps["tmp"])
    assert bad.returncode == 2 and "no sweep 'nope'" in bad.stderr and "sweeps there: killed" in bad.stderr
    again = _cli("run", str(sweeps["grid"]), "--storage", str(storage), "--name", "killed",
                 cwd=sweeps["tmp"])
    assert again.returncode == 2 and "already exists" in again.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _other_ip() -> str | None:
    """A non-loopback address of this machine, if it has one."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # no packet is sent for UDP connect
            ip = s.getsockname()[0]
    except OSError:
        return None
    return None if ip.startswith("127.") else ip


def test_ui_serves_the_sweep_store_on_loopback_only(sweeps):
    port = _free_port()
    proc = subprocess.Popen(fl_sweep("ui", "killed", "--storage", str(sweeps["storage"]), "--port", str(port)),
                            cwd=sweeps["tmp"], env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        body = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(
                        f"{url}/api/2.0/mlflow/experiments/get-by-name?experiment_name=resume", timeout=2) as r:
                    body = json.loads(r.read())
                    break
            except OSError:
                time.sleep(0.5)
        assert body is not None, proc.stdout.read1().decode() if proc.stdout else ""
        assert body["experiment"]["name"] == "resume"
        assert not (sweeps["tmp"] / "mlruns").exists() and not (sweeps["tmp"] / "mlartifacts").exists()
        ip = _other_ip()
        if ip is not None:
            with pytest.raises(OSError):
                urllib.request.urlopen(f"http://{ip}:{port}/health", timeout=2)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
