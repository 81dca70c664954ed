"""Every file the tool reads back is untrusted input (issue 19): sweep.json, driver.json, a
run's config.yaml / metrics.jsonl / status.json (an export someone sends you), a warm-up
cache's status.json / state.pt, LEAF JSON. One table per file kind, one row per defect
class; each row ends in the project's error naming the file (and the key): through the
real command where there is one (`sweeper.cli.main` → exit 2, one line on stderr), else
through the function the command calls. All go through one guarded reader
(fl_core.safeio; YAML through sweeper.yamlio). Add a row when a new kind of damage turns
up. No Ray is started; the MLflow store is a real sqlite one."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import time
from pathlib import Path

import pytest

from fl_core.errors import DatasetError, FLCoreError
from sweeper import storage as st
from sweeper.cli import main
from sweeper.errors import SweeperError

DEEP = b"[" * 100_000 + b"]" * 100_000  # 100,000 levels: a RecursionError for json.loads
BOMB = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
seed: *g
"""  # 330 bytes that expand to 4.8 million strings


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()


def one_line(rc: int, err: str, *words: str) -> str:
    """Exit 2 and one short line on stderr holding `words`, no traceback."""
    assert rc == 2, err[-2000:]
    line = err.strip()
    assert "\n" not in line and line.startswith("fl-sweep: error: "), err[-2000:]
    assert len(line) < 1500, f"{len(line)}-character error line"
    for w in words:
        assert w in line, line
    return line


def _bytes(content: str | bytes | object) -> bytes:
    if isinstance(content, bytes):
        return content
    if isinstance(content, str):
        return content.encode()
    return json.dumps(content).encode()


# --------------------------------------------------------------------------- sweep.json
def manifest(name: str = "s1", **changes) -> dict:
    m = {"name": name, "tracking_uri": "sqlite:////nowhere/mlflow.db", "experiment_id": "1",
         "parent_run_id": "0" * 32, "num_trials": 1, "created": "2026-01-01T00:00:00",
         "trials": [{"index": 0, "trial_key": "a" * 64, "rounds": 2, "overrides": {}}]}
    m.update(changes)
    return m


def _trial(**changes) -> dict:
    return {"index": 0, "trial_key": "a" * 64, "rounds": 2, "overrides": {}, **changes}


SWEEP_JSON = [  # (id, content, words in the message)
    ("list", b"[]", ["should be a JSON object"]),
    ("empty-object", b"{}", ["`name`: Field required"]),
    ("not-utf8", b'{"name": "caf\xe9"}', ["not UTF-8", "0xe9"]),
    ("truncated", b'{"name": "s1", "tracking', ["not valid JSON"]),
    ("deep", DEEP, ["nested more than"]),
    ("duplicate-key", b'{"name": "s1", "name": "s2"}', ["the key 'name' twice"]),
    ("uri-not-text", manifest(tracking_uri=5), ["`tracking_uri`", "valid string"]),
    ("quote-in-name", manifest(name="it's"), ["`name`", "pattern"]),
    ("trials-not-list", manifest(trials={"0": 1}), ["`trials`"]),
    ("index-as-text", manifest(trials=[_trial(index="0")]), ["`trials[0].index`", "valid integer"]),
    ("rounds-as-bool", manifest(trials=[_trial(rounds=True)]), ["`trials[0].rounds`"]),
    ("count-mismatch", manifest(num_trials=3), ["num_trials is 3 but trials lists 1"]),
]


@pytest.fixture
def sweeps(tmp_path):
    def make(content, name: str = "s1") -> Path:
        d = tmp_path / "sweeps" / name
        d.mkdir(parents=True)
        (d / st.MANIFEST).write_bytes(_bytes(content))
        return d
    return make


@pytest.mark.parametrize("content,words", [r[1:] for r in SWEEP_JSON], ids=[r[0] for r in SWEEP_JSON])
def test_damaged_sweep_json_is_one_line_in_status(sweeps, content, words):
    d = sweeps(content)
    rc, _, err = cli("status", "s1", "--storage", str(d.parent))
    one_line(rc, err, str(d / st.MANIFEST), *words)


@pytest.mark.parametrize("argv", [["status", "s1"], ["ui", "s1"], ["ui"], ["resume", "s1"],
                                  ["report", "s1", "--no-log"]])
@pytest.mark.parametrize("content", [b"[]", b"{}", b"\xff\xfe"], ids=["list", "empty", "binary"])
def test_every_command_reading_sweep_json_names_it(sweeps, tmp_path, argv, content):
    d = sweeps(content)
    extra = ["--out", str(tmp_path / "out")] if argv[0] == "report" else []
    rc, _, err = cli(*argv, "--storage", str(d.parent), *extra)
    one_line(rc, err, str(d / st.MANIFEST))
    assert not (tmp_path / "out").exists() and sorted(os.listdir(d)) == [st.MANIFEST]


def test_list_shows_a_damaged_sweep_as_a_line_of_its_own(sweeps):
    """One bad sweep.json neither aborts the listing nor hides itself: the good sweeps are
    listed, and the bad one with what is wrong."""
    good = sweeps(manifest("good"), "good")
    sweeps(b"[]", "bad-list")
    sweeps(b"\xff\xfe", "bad-binary")
    rc, out, err = cli("list", "--storage", str(good.parent))
    assert rc == 0 and err == "", err
    rows = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert "good" in rows and "2026-01-01" in rows["good"]
    assert "damaged sweep.json" in rows["bad-list"] and "should be a JSON object" in rows["bad-list"]
    assert "damaged sweep.json" in rows["bad-binary"] and "not UTF-8" in rows["bad-binary"]


def test_a_manifest_without_a_key_a_command_needs_is_one_line(sweeps):
    """An older manifest may lack keys; a command that needs one names it."""
    m = manifest()
    del m["trials"]
    d = sweeps(m)
    rc, _, err = cli("status", "s1", "--storage", str(d.parent))
    one_line(rc, err, str(d / st.MANIFEST), "has no `trials`")


# --------------------------------------------------------------------------- driver.json
def _info(**changes) -> dict:
    now = time.time()
    return {"host": socket.gethostname(), "pid": 999_999, "command": "run", "since": now - 100,
            "heartbeat": now - 1, **changes}


DRIVER = [  # (id, what to put where, words): driver.json unless the id says driver.lock
    ("since-nan", _info(since=float("nan")), ["`since`", "finite number"]),
    ("pid-1e30", _info(pid=1e30), ["`pid`", "valid integer"]),
    ("pid-huge-int", _info(pid=10**30), ["`pid`", "less than or equal"]),
    ("pid-as-text", _info(pid="123"), ["`pid`"]),
    ("host-not-text", _info(host=5), ["`host`"]),
    ("list", b"[]", ["should be a JSON object"]),
    ("not-json", b"\x00\x01", ["not valid JSON"]),
    ("directory", "DIR", ["is a directory"]),
    ("future-heartbeat-other-host", _info(host="other-host.example", heartbeat=time.time() + 86_400),
     ["in the future", "other-host.example", "move", "away"]),
    ("driver.lock-directory", "LOCKDIR", ["driver.lock", "cannot open the sweep's lock file"]),
]


def _damage_driver(sweep: Path, what) -> Path:
    if what == "DIR":
        (sweep / "driver.json").mkdir()
    elif what == "LOCKDIR":
        (sweep / "driver.lock").mkdir()
        return sweep / "driver.lock"
    else:
        (sweep / "driver.json").write_bytes(_bytes(what))
    return sweep / "driver.json"


@pytest.mark.parametrize("what,words", [r[1:] for r in DRIVER], ids=[r[0] for r in DRIVER])
def test_damaged_driver_json_refuses_the_lock_with_one_line(sweeps, what, words):
    """`resume` takes the lock before Ray starts: a driver.json it cannot trust (or a lock
    file that is not a file) is one line naming it and saying how to go on; waiting
    ("retry after 60 s") would never help."""
    from sweeper.lock import SweepLock

    d = sweeps(manifest())
    path = _damage_driver(d, what)
    with pytest.raises(SweeperError) as e:
        SweepLock(d, "resume").acquire()
    assert str(path) in str(e.value) or path.name in str(e.value)
    rc, _, err = cli("resume", "s1", "--storage", str(d.parent))
    line = one_line(rc, err, path.name, *words)
    assert "retry after" not in line
    assert not (d / "tune").exists()  # nothing started


@pytest.mark.parametrize("what,words", [r[1:] for r in DRIVER if r[0] in ("pid-1e30", "since-nan", "list")],
                         ids=["pid-1e30", "since-nan", "list"])
def test_status_names_a_damaged_driver_json(sweeps, what, words):
    d = sweeps(manifest())
    path = _damage_driver(d, what)
    rc, _, err = cli("status", "s1", "--storage", str(d.parent))
    one_line(rc, err, str(path), *words)


# --------------------------------------------------------------------------- exported runs
def _export_dir(tmp_path: Path) -> Path:
    """An exported run directory (config.yaml + metrics.jsonl + status.json), as
    `fl-sweep export` writes one."""
    from fl_core.config import parse_config
    from sweeper.configio import dump_config

    d = tmp_path / "exported" / "trial_0123456789abcdef"
    d.mkdir(parents=True)
    cfg = parse_config({"data": {"source": "embedded"}, "fl": {"rounds": 3}})
    (d / "config.yaml").write_text(dump_config(cfg))
    (d / "metrics.jsonl").write_text("".join(
        json.dumps({"round": r, "main_acc": 0.5 + r / 10, "backdoor_acc": 0.1}) + "\n" for r in (1, 2, 3)))
    (d / "status.json").write_text(json.dumps({"status": "finished", "sweep": "s", "trial_key": "k"}))
    return d


def _metrics(rows: list) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows)


GOOD_ROW = {"round": 1, "main_acc": 0.5}
RUN_FILES = [  # (id, file, content, words)
    ("config-alias-bomb", "config.yaml", BOMB, ["config.yaml", "expands to more than"]),
    ("config-python-tag", "config.yaml", "seed: !!python/object/apply:os.system ['true']\n",
     ["config.yaml", "unsupported YAML tag"]),
    ("config-duplicate-key", "config.yaml", "seed: 1\nseed: 2\n", ["config.yaml", "duplicate key"]),
    ("config-not-utf8", "config.yaml", b"seed: 1 # caf\xe9\n", ["config.yaml", "not UTF-8"]),
    ("metrics-round-as-text", "metrics.jsonl", _metrics([{"round": "1", "main_acc": 0.5}]),
     ["metrics.jsonl: line 1", "`round`", "valid integer"]),
    ("metrics-round-as-bool", "metrics.jsonl", _metrics([{"round": True, "main_acc": 0.5}, GOOD_ROW]),
     ["line 1", "`round`"]),
    ("metrics-metric-as-text", "metrics.jsonl", _metrics([GOOD_ROW, {"round": 2, "main_acc": "0.5"}]),
     ["line 2", "`main_acc`", "valid number"]),
    ("metrics-metric-as-object", "metrics.jsonl", _metrics([{"round": 1, "main_acc": {"v": 1}}, GOOD_ROW]),
     ["line 1", "`main_acc`"]),
    ("metrics-no-round", "metrics.jsonl", _metrics([{"main_acc": 0.5}]), ["line 1", "`round`"]),
    ("metrics-deep-line", "metrics.jsonl", _metrics([b"[" * 100_000 + b"]" * 100_000, GOOD_ROW]),
     ["line 1", "nested more than"]),
    ("metrics-deep-last-line", "metrics.jsonl", _metrics([GOOD_ROW, b"[" * 100_000 + b"]" * 100_000]),
     ["line 2", "nested more than"]),
    ("status-not-text", "status.json", {"status": 5}, ["status.json", "`status`"]),
    ("status-markup", "status.json", {"status": "<img src=x onerror=alert(1)>"}, ["status.json", "`status`"]),
    ("status-list", "status.json", b"[]", ["status.json", "should be a JSON object"]),
    ("status-not-utf8", "status.json", b'{"status": "fin\xe9"}', ["status.json", "not UTF-8"]),
    ("status-directory", "status.json", "DIR", ["status.json", "is a directory"]),
]


@pytest.mark.parametrize("name,content,words", [r[1:] for r in RUN_FILES], ids=[r[0] for r in RUN_FILES])
def test_damaged_file_of_an_exported_run_is_one_error_naming_it(tmp_path, name, content, words):
    from sweeper.report.load import load_sweeps

    d = _export_dir(tmp_path)
    load_sweeps([str(d.parent)])  # the intact export loads
    (d / name).unlink()
    if content == "DIR":
        (d / name).mkdir()
    else:
        (d / name).write_bytes(_bytes(content))
    with pytest.raises((SweeperError, FLCoreError)) as e:
        load_sweeps([str(d.parent)])
    msg = str(e.value)
    assert str(d / name) in msg and "\n" not in msg and len(msg) < 1500
    for w in words:
        assert w in msg, msg


@pytest.mark.parametrize("row", ["config-alias-bomb", "metrics-metric-as-text", "status-list"])
def test_report_and_export_of_a_damaged_run_exit_2_and_write_nothing(tmp_path, row):
    _, name, content, words = next(r for r in RUN_FILES if r[0] == row)
    d = _export_dir(tmp_path)
    (d / name).write_bytes(_bytes(content))
    for argv in (["report", str(d.parent), "--out", str(tmp_path / "rep"), "--no-log"],
                 ["export", str(d.parent), "--out", str(tmp_path / "exp")]):
        rc, _, err = cli(*argv)
        one_line(rc, err, str(d / name), *words)
    assert not (tmp_path / "rep").exists() and not (tmp_path / "exp").exists()


# --------------------------------------------------------------------------- LEAF JSON
def _image(v: float = 1.0) -> list:
    return [v] * 784


LEAF = [  # (id, content, words)
    ("deep", DEEP, ["nested more than"]),
    ("label-as-text", {"user_data": {"w": {"x": [_image()], "y": ["3"]}}}, ["`user_data.w.y[0]`"]),
    ("label-as-bool", {"user_data": {"w": {"x": [_image()], "y": [True]}}}, ["`user_data.w.y[0]`"]),
    ("label-huge", {"user_data": {"w": {"x": [_image()], "y": [10**30]}}}, ["`user_data.w.y[0]`"]),
    ("pixel-as-text", {"user_data": {"w": {"x": [["0.5"] * 784], "y": [3]}}}, ["`user_data.w.x[0][0]`"]),
    ("pixel-nan", b'{"user_data": {"w": {"x": [[NaN' + b", 1.0" * 783 + b']], "y": [3]}}}',
     ["`user_data.w.x[0][0]`"]),
    ("duplicate-writer", b'{"user_data": {"w": {"x": [], "y": []}, "w": {"x": [], "y": []}}}',
     ["the key 'w' twice"]),
]


@pytest.mark.parametrize("content,words", [r[1:] for r in LEAF], ids=[r[0] for r in LEAF])
def test_damaged_leaf_json_is_a_dataset_error_naming_it(tmp_path, content, words):
    from fl_core.data.leaf import read_leaf_dir

    p = tmp_path / "train" / "bad.json"
    p.parent.mkdir()
    p.write_bytes(_bytes(content))
    with pytest.raises(DatasetError) as e:
        read_leaf_dir(tmp_path)
    msg = str(e.value)
    assert str(p) in msg and "\n" not in msg and len(msg) < 1500
    for w in words:
        assert w in msg, msg


# --------------------------------------------------------------------------- warm-up caches
WARMUP_GRID = """\
name: w
base:
  data: {source: synthetic, num_writers: 12, examples_per_writer: 20}
  fl: {rounds: 4, clients_per_round: 4, local_epochs: 1, checkpoint_every: 2}
  attack: {kind: model-replacement, fraction: 0.2, frequency: 1, num_tasks: 3, start_round: 2}
grid:
  attack.kind: [none, model-replacement]
seeds: 1
warmup: {rounds: 2}
resources: {executor: in-process, cpus_per_trial: 1}
"""


@pytest.fixture(scope="module")
def warm_cache(tmp_path_factory):
    """(storage root, key, config) of one warm-up computed in this process (the body of the
    Ray task that computes it)."""
    from sweeper import warmup
    from sweeper.grid import load_grid

    root = tmp_path_factory.mktemp("warm")
    grid = root / "w.yaml"
    grid.write_text(WARMUP_GRID)
    ((key, cfg),) = load_grid(grid).warmups.items()
    storage = root / "storage"
    assert warmup.compute(cfg.model_dump(mode="json"), str(warmup.warmup_dir(storage, key))) == "finished"
    return storage, key, cfg


@pytest.fixture
def cache_copy(warm_cache, tmp_path):
    from sweeper import warmup

    storage, key, cfg = warm_cache
    d = warmup.warmup_dir(tmp_path / "storage", key)
    shutil.copytree(warmup.warmup_dir(storage, key), d)
    return tmp_path / "storage", key, cfg, d


def _cut_in_half(p: Path) -> None:
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


WARMUP_STATE = [  # (id, damage to state.pt, words)
    ("cut-in-half", _cut_in_half, ["not a usable checkpoint"]),
    ("empty", lambda p: p.write_bytes(b""), ["not a usable checkpoint", "empty"]),
    ("directory", lambda p: (p.unlink(), p.mkdir()), ["is not a file"]),
    ("foreign-file", lambda p: p.write_bytes(b"not a checkpoint"), ["not a usable checkpoint"]),
]


@pytest.mark.parametrize("damage,words", [r[1:] for r in WARMUP_STATE], ids=[r[0] for r in WARMUP_STATE])
def test_a_damaged_warmup_checkpoint_stops_the_sweep_before_any_trial(cache_copy, damage, words):
    """A finished cache whose state.pt is damaged used to be "reused": every trial then
    failed in Ray with unpickling tracebacks. The driver now reads it first: one line naming
    the file and how to go on, nothing launched, nothing deleted or recomputed."""
    import ray

    from sweeper import warmup

    storage, key, cfg, d = cache_copy
    damage(d / "state.pt")
    before = sorted(os.listdir(d))
    said: list[str] = []
    with pytest.raises(SweeperError) as e:
        warmup.ensure({key: cfg}, storage, launch_cwd=None, echo=said.append)
    msg = str(e.value)
    assert str(d / "state.pt") in msg and "\n" not in msg and f"move {d} away" in msg
    for w in words:
        assert w in msg, msg
    assert not ray.is_initialized() and said == []  # no warm-up task, no trial
    assert sorted(os.listdir(d)) == before


WARMUP_STATUS = [  # (id, status.json content, words)
    ("round-as-text", {"status": "finished", "round": "2", "rounds": 2}, ["`round`", "valid integer"]),
    ("unknown-status", {"status": "done", "round": 2, "rounds": 2}, ["`status`"]),
    ("list", b"[]", ["should be a JSON object"]),
    ("not-json", b'{"status": "fini', ["not valid JSON"]),
]


@pytest.mark.parametrize("content,words", [r[1:] for r in WARMUP_STATUS], ids=[r[0] for r in WARMUP_STATUS])
def test_a_damaged_warmup_status_is_named_not_recomputed_over(cache_copy, content, words):
    """The task that computes a warm-up (here run in-process) refuses a cache whose
    status.json it cannot trust, instead of recomputing over the cache."""
    from sweeper import warmup

    storage, key, cfg, d = cache_copy
    (d / "status.json").write_bytes(_bytes(content))
    state = (d / "state.pt").read_bytes()
    with pytest.raises(SweeperError) as e:
        warmup.compute(cfg.model_dump(mode="json"), str(d))
    msg = str(e.value)
    assert str(d / "status.json") in msg and "\n" not in msg
    for w in words:
        assert w in msg, msg
    assert (d / "state.pt").read_bytes() == state


def test_intact_and_interrupted_caches_are_still_used(cache_copy):
    from sweeper import warmup

    storage, key, cfg, d = cache_copy
    assert warmup.cache_state(d, cfg.fl.rounds) == "finished"
    status = json.loads((d / "status.json").read_text())
    (d / "status.json").write_text(json.dumps({**status, "status": "running"}))
    assert warmup.cache_state(d, cfg.fl.rounds) == "incomplete"  # compute resumes it
    assert warmup.cache_state(d.parent / "absent", cfg.fl.rounds) == "missing"


def test_errors_of_the_warmup_task_pickle_intact():
    """The cache's error is raised inside a Ray task: it must cross to the driver whole."""
    import pickle

    from fl_core.safeio import UntrustedFileError

    for e in (st.SweepFileError("f", "p", "r"), UntrustedFileError("f", "p")):
        back = pickle.loads(pickle.dumps(e))
        assert type(back) is type(e) and str(back) == str(e)


def test_a_damaged_cache_found_inside_the_warmup_task_reaches_the_driver_as_one_line(tmp_path):
    """If the cache is damaged between the driver's check and the task's (another sweep
    sharing the storage), the task's error is re-raised as itself, not as Ray's wrapped
    traceback. ray.get is replaced by what it raises for a task that failed."""
    from types import SimpleNamespace

    import ray
    from ray.exceptions import RayTaskError

    from sweeper import warmup

    original = st.SweepFileError(str(tmp_path / "state.pt"), "not a usable checkpoint", "move it away")

    def get(_ref):
        raise RayTaskError("compute", "Traceback (most recent call last): ...", original,
                           proctitle="ray::compute", pid=1, ip="127.0.0.1").as_instanceof_cause()

    with pytest.raises(st.SweepFileError) as e:
        warmup._get(SimpleNamespace(get=get, exceptions=ray.exceptions), "ref")
    assert type(e.value) is st.SweepFileError and str(e.value) == str(original)
    rc = RayTaskError("compute", "tb", ValueError("a bug"), proctitle="p", pid=1, ip="127.0.0.1")

    def get_bug(_ref):
        raise rc.as_instanceof_cause()

    with pytest.raises(RayTaskError):  # a bug keeps its traceback
        warmup._get(SimpleNamespace(get=get_bug, exceptions=ray.exceptions), "ref")


# --------------------------------------------------------------------------- MLflow filters
@pytest.mark.slow  # builds an MLflow store
def test_sweep_names_with_quotes_are_found_exactly(tmp_path):
    """A sweep name goes into MLflow filter strings, whose grammar has no escapes: a name
    with `'`, `"` or both (or a backslash) is still found, and only that sweep."""
    from fl_core.config import config_hash, flatten, parse_config
    from sweeper.report.load import find_parent_runs, load_sweeps
    from sweeper.tracking import Tracker, default_uri

    uri = default_uri(tmp_path)
    tr = Tracker(uri)
    tr.init_store()
    exp = tr.experiment("quotes", (tmp_path / "artifacts").as_uri())
    names = ["it's", 'say "hi"', "both ' and \"", "back\\slash'", "both _ and \""]
    for i, name in enumerate(names):
        parent = tr.start_parent(exp, name)
        cfg = parse_config({"seed": i, "data": {"source": "embedded"}, "fl": {"rounds": 2}})
        run = tr.get_or_create_child(exp, parent, name, config_hash(cfg), f"t{i}", flatten(cfg))
        tr.log_metrics(run, {"main_acc": 0.5 + i / 100, "backdoor_acc": 0.1}, step=1)
        tr.finish(run, "finished")
    for i, name in enumerate(names):
        (p,) = find_parent_runs(uri, name)
        assert p.data.tags["fl_sweep.sweep"] == name
        data = load_sweeps([name], tracking_uri=uri)
        assert data.name == name and data.runs["seed"].tolist() == [i]


def test_run_with_a_damaged_warmup_cache_exits_2_before_the_sweep_exists(cache_copy, tmp_path):
    """`fl-sweep run` checks the warm-up caches the grid will reuse before it starts Ray or
    creates the sweep directory: a damaged cache leaves no half-made sweep behind."""
    import ray

    storage, key, cfg, d = cache_copy
    _cut_in_half(d / "state.pt")
    grid = tmp_path / "w.yaml"
    grid.write_text(WARMUP_GRID)
    before = sorted(p.name for p in storage.iterdir())
    rc, _, err = cli("run", str(grid), "--storage", str(storage))
    assert rc == 2 and str(d / "state.pt") in err and "Traceback" not in err, err
    assert sorted(p.name for p in storage.iterdir()) == before  # no sweep directory
    assert not ray.is_initialized()
