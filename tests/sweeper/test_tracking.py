"""The MLflow layer on a real sqlite store: parent/child layout, idempotent re-opening,
resume logging only new steps, and 8 concurrent writers losing no metric."""

from __future__ import annotations

import multiprocessing as mp
import os
import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path

import pytest

from sweeper import tracking
from sweeper.errors import TrackingError
from sweeper.status import SweepStatus, TrialStatus
from sweeper.tracking import PARENT, ROLE, STATUS, TRIAL_KEY, Tracker, _retry, default_uri, normalize_uri

REPO = Path(__file__).resolve().parents[2]
ROUNDS = 30
METRICS = ("main_acc", "main_loss", "backdoor_acc", "backdoor_acc_heldout", "num_attackers",
           "benign_norm_p50", "benign_norm_p90", "benign_norm_max", "attacker_norm_pre",
           "attacker_norm_post", "aggregate_norm", "round_seconds")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One store for the module (creating MLflow's schema takes seconds), made from the
    template path so the second creation below is a copy."""
    root = tmp_path_factory.mktemp("store")
    tr = Tracker(default_uri(root / "a"))
    tr.init_store(template_dir=root)
    exp = tr.experiment("exp", (root / "a" / "artifacts").as_uri())
    parent = tr.start_parent(exp, "sweep", "desc")
    return root, tr, exp, parent


def test_template_copy_gives_a_working_store_in_wal_mode(store):
    root, *_ = store
    templates = list(root.glob(".mlflow-schema-*.db"))
    assert len(templates) == 1
    tr2 = Tracker(default_uri(root / "b"))
    tr2.init_store(template_dir=root)
    exp = tr2.experiment("other")
    run = tr2.start_parent(exp, "s2")
    assert tr2.get_run(run).data.tags[ROLE] == "parent"
    with sqlite3.connect(root / "b" / "mlflow.db") as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_child_run_is_found_again_and_logs_only_new_steps(store):
    _, tr, exp, parent = store
    a = tr.get_or_create_child(exp, parent, "sweep", "key-1", "trial-0001", {"fl.rounds": 10, "data.path": None})
    for r in range(1, 6):
        tr.log_metrics(a, {"round": r, "main_acc": r / 10, "backdoor_acc_heldout": None}, step=r)
    tr.finish(a, "failed")
    # a restarted trial without a checkpoint finds the same run by its tags ...
    b = tr.get_or_create_child(exp, parent, "sweep", "key-1", "trial-0001", {"fl.rounds": 10})
    assert b == a
    run = tr.get_run(a)
    assert run.info.status == "RUNNING" and run.data.tags[STATUS] == "running"
    assert run.data.tags[PARENT] == parent and run.data.tags[TRIAL_KEY] == "key-1"
    assert run.data.params["data.path"] == "None"
    # ... and replays rounds 1..10, logging only those not in the store
    last = tr.last_step(a)
    assert last == 5
    for r in range(1, 11):
        if r > last:
            tr.log_metrics(a, {"round": r, "main_acc": r / 10}, step=r)
    tr.finish(a, "finished")
    assert tr.metric_steps(a, "main_acc") == list(range(1, 11))
    assert "backdoor_acc_heldout" not in tr.get_run(a).data.metrics
    assert tr.get_run(a).info.status == "FINISHED"
    other = tr.get_or_create_child(exp, parent, "sweep", "key-2", "trial-0002", {})
    assert other != a
    assert {r.info.run_id for r in tr.child_runs(exp, parent)} == {a, other}


def test_retry_retries_locks_only():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return "ok"

    before = tracking.RETRIES
    assert _retry(flaky) == "ok" and len(calls) == 3
    assert tracking.RETRIES - before == 2

    def broken():
        calls.append(1)
        raise ValueError("no such table: runs")

    calls.clear()
    with pytest.raises(ValueError):
        _retry(broken)
    assert len(calls) == 1


# The writer's code travels as a string run by `exec` (a builtin, so it pickles by
# reference): a function of this test module could not be imported by name in the
# children under pytest's importlib mode.
WRITER = """
from sweeper import tracking
from sweeper.tracking import Tracker
tr = Tracker(uri)
run = tr.get_or_create_child(exp, parent, "sweep", f"conc-{i}", f"trial-{i}", {"i": i, "x.y": "z"})
q.put(("started", i))
for r in range(1, rounds + 1):
    tr.log_metrics(run, {"round": r, **{k: i + r / 1000 for k in metrics}}, step=r)
tr.finish(run, "finished")
q.put((i, run, tracking.RETRIES))
"""


@pytest.mark.slow  # eight processes importing MLflow
def test_eight_concurrent_writers_lose_no_metric(store):
    """8 processes (as 8 trials) log 30 rounds × 13 metrics each into one sqlite store at
    full speed; every (key, step) must be there exactly once."""
    root, tr, exp, parent = store
    # forkserver: children start from a process that has imported mlflow but opened no store
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["mlflow", "sweeper.tracking"])
    q = ctx.Queue()
    os.environ["PYTHONPATH"] = str(REPO)
    procs = [ctx.Process(target=exec, args=(WRITER, {
        "uri": tr.uri, "exp": exp, "parent": parent, "i": i, "q": q, "rounds": ROUNDS, "metrics": METRICS,
    })) for i in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    assert [p.exitcode for p in procs] == [0] * 8
    msgs = [q.get(timeout=5) for _ in range(16)]
    got = sorted(m for m in msgs if m[0] != "started")
    print(f"concurrent writers: {sum(g[2] for g in got)} lock retries")
    for i, run, _ in got:
        r = tr.get_run(run)
        assert r.info.status == "FINISHED" and r.data.params["i"] == str(i)
        for k in ("round", *METRICS):
            hist = tr.client.get_metric_history(run, k)
            assert sorted(m.step for m in hist) == list(range(1, ROUNDS + 1)), (i, k)
            assert sorted(m.value for m in hist) == pytest.approx(
                [r if k == "round" else i + r / 1000 for r in range(1, ROUNDS + 1)])


@pytest.mark.slow
def test_a_real_database_is_locked_is_retried(store):
    """MLflow waits 20 s (its sqlite busy_timeout) for a lock, then raises "database is
    locked". Hold the write lock for longer than that: the write must be retried and land
    exactly once."""
    _, tr, exp, parent = store
    run = tr.get_or_create_child(exp, parent, "sweep", "locked", "trial-locked", {})
    tr.log_metrics(run, {"main_acc": 0.1}, step=1)
    db = tracking.sqlite_path(tr.uri)
    holding = threading.Event()

    def hold():
        with closing(sqlite3.connect(db, timeout=30, isolation_level=None)) as con:
            con.execute("BEGIN EXCLUSIVE")
            holding.set()
            time.sleep(21.5)
            con.execute("COMMIT")

    th = threading.Thread(target=hold)
    th.start()
    holding.wait(10)
    before = tracking.RETRIES
    tr.log_metrics(run, {"main_acc": 0.2}, step=2)
    th.join()
    assert tracking.RETRIES > before
    assert tr.metric_steps(run, "main_acc") == [1, 2]


def test_normalize_uri_makes_sqlite_paths_absolute_and_refuses_file_stores(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert normalize_uri("sqlite:///rel/m.db") == f"sqlite:///{tmp_path}/rel/m.db"
    assert normalize_uri("sqlite:////abs/m.db") == "sqlite:////abs/m.db"
    assert normalize_uri("store.db") == f"sqlite:///{tmp_path}/store.db"
    assert normalize_uri("http://mlflow:5000") == "http://mlflow:5000"
    for bad in ("./mlruns", "file:///tmp/mlruns"):
        with pytest.raises(TrackingError, match="file stores are not supported"):
            normalize_uri(bad)


def test_status_eta():
    def t(state, rnd, secs=None):
        return TrialStatus(0, "k", {}, state, rnd, 10, round_seconds=secs)

    s = SweepStatus(Path("."), {"max_concurrent_trials": 2},
                    [t("finished", 10, 2.0), t("running", 4, 4.0), t("pending", 0)])
    # 16 rounds left × 3 s mean ÷ 2 trials at once
    assert s.eta_seconds() == pytest.approx(24.0)
    assert s.counts() == {"finished": 1, "running": 1, "pending": 1}
    assert SweepStatus(Path("."), {}, [t("finished", 10, 1.0)]).eta_seconds() is None
    assert SweepStatus(Path("."), {}, [t("pending", 0)]).eta_seconds() is None
