"""One module owns MLflow (issue 20 item 3): `sweeper.tracking` holds every tag name and
is the only sweeper module that imports mlflow; the report reads each run's logged
config.yaml instead of re-typing params; read-only commands bound MLflow's HTTP retries."""

from __future__ import annotations

import ast
import os
import re
import socket
from pathlib import Path

import pytest

from fl_core.config import config_hash, flatten, parse_config

SWEEPER = Path(__file__).resolve().parents[2] / "sweeper"
OWNER = SWEEPER / "tracking.py"


def _modules() -> list[Path]:
    return sorted(p for p in SWEEPER.rglob("*.py") if p != OWNER)


def test_tag_names_are_spelled_only_in_tracking():
    literal = re.compile(r"""["']fl_sweep\.""")
    found = [f"{p.relative_to(SWEEPER.parent)}:{i}" for p in _modules()
             for i, line in enumerate(p.read_text().splitlines(), 1) if literal.search(line)]
    assert not found, f"tag names spelled outside sweeper/tracking.py: {found}"


def test_only_tracking_imports_mlflow():
    found = []
    for p in _modules():
        for node in ast.walk(ast.parse(p.read_text(), str(p))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0
                     else [])
            found += [f"{p.relative_to(SWEEPER.parent)}:{node.lineno} {n}" for n in names
                      if n == "mlflow" or n.startswith("mlflow.")]
    assert not found, f"mlflow imported outside sweeper/tracking.py: {found}"


# -- the report reads config.yaml ---------------------------------------------------------
def _cfg(seed: int, sigma: float):
    return parse_config({"seed": seed, "data": {"source": "embedded", "max_writers": 40},
                         "fl": {"rounds": 3}, "attack": {"kind": "pgd", "fraction": 0.033},
                         "defense": {"norm_bound": 5.0, "noise_sigma": sigma}})


def _store(root: Path, name: str, with_config: bool, params=flatten) -> Path:
    """A sweep directory (manifest + sqlite store) of 2 cells × 2 seeds, children made by
    the Tracker with or without their config.yaml artifact (an older store has none)."""
    from sweeper import storage
    from sweeper.tracking import Tracker, default_uri

    sweep_dir = root / name
    sweep_dir.mkdir(parents=True)
    uri = default_uri(sweep_dir)
    tr = Tracker(uri)
    tr.init_store(template_dir=root)
    exp = tr.experiment(name, (sweep_dir / "artifacts").as_uri())
    parent = tr.start_parent(exp, name)
    for sigma, bd in ((0.0, 0.6), (0.025, 0.2)):
        for seed in (0, 1):
            cfg = _cfg(seed, sigma)
            kw = {"config": cfg} if with_config else {}
            run = tr.get_or_create_child(exp, parent, name, config_hash(cfg), f"s{sigma}-{seed}",
                                         params(cfg), **kw)
            for r in range(1, 4):
                tr.log_metrics(run, {"main_acc": 0.8 + 0.01 * r + 0.001 * seed,
                                     "backdoor_acc": bd}, step=r)
            tr.finish(run, "finished")
    storage.write_json(sweep_dir / storage.MANIFEST, {
        "name": name, "tracking_uri": uri, "experiment_id": exp, "parent_run_id": parent})
    return sweep_dir


@pytest.mark.slow  # builds MLflow stores
def test_report_reads_the_logged_config_and_falls_back_to_params(tmp_path):
    from sweeper.report.load import load_sweeps

    new = load_sweeps([str(_store(tmp_path, "new", True))])
    old = load_sweeps([str(_store(tmp_path, "old", False))])
    assert new.cells() == old.cells() == ["σ=0", "σ=0.025"]
    cols = sorted(c for c in new.runs.columns if "." in c or c in ("seed", "cell", "trial_key"))
    assert cols == sorted(c for c in old.runs.columns if "." in c or c in ("seed", "cell", "trial_key"))
    key = ["trial_key"]
    a = new.runs[cols].sort_values(key).reset_index(drop=True)
    b = old.runs[cols].sort_values(key).reset_index(drop=True)
    assert a.astype(str).equals(b.astype(str))

    def curves(d):
        m = d.metrics.assign(trial_key=d.metrics["run_id"].map(d.runs["trial_key"]))
        return sorted(zip(m["trial_key"], m["round"], m["main_acc"], m["backdoor_acc"]))

    assert curves(new) == curves(old) and len(curves(new)) == 12


@pytest.mark.slow
def test_the_config_artifact_wins_over_the_params(tmp_path):
    """Params are strings the report had to re-type; the logged config.yaml is the run's
    config itself: where they disagree (here, params that were never right), it wins."""
    import yaml

    from sweeper import storage
    from sweeper.report.load import load_sweeps
    from sweeper.tracking import Tracker

    def wrong(cfg):
        return {**flatten(cfg), "defense.norm_bound": "7", "attack.fraction": "abc"}

    sweep_dir = _store(tmp_path, "s", False, params=wrong)
    man = storage.read_manifest(sweep_dir)
    tr = Tracker(man["tracking_uri"])
    for run in tr.child_runs(man["experiment_id"], man["parent_run_id"]):
        sigma, seed = run.info.run_name[1:].split("-")
        d = tmp_path / run.info.run_id
        d.mkdir()
        # as a trial of an earlier sweeper logged it when it ended
        (d / "config.yaml").write_text(yaml.safe_dump(
            _cfg(int(seed), float(sigma)).model_dump(mode="json"), sort_keys=False))
        tr.log_artifact(run.info.run_id, d / "config.yaml")
    data = load_sweeps([str(sweep_dir)])
    assert data.runs["defense.norm_bound"].tolist() == [5.0] * 4
    assert data.runs["attack.fraction"].tolist() == [0.033] * 4


@pytest.mark.slow
def test_a_damaged_config_artifact_is_one_line_naming_the_run(tmp_path, capsys):
    from sweeper.cli import main
    from sweeper.tracking import CONFIG_ARTIFACT, Tracker
    from sweeper import storage

    sweep_dir = _store(tmp_path, "s", True)
    man = storage.read_manifest(sweep_dir)
    tr = Tracker(man["tracking_uri"])
    run = tr.child_runs(man["experiment_id"], man["parent_run_id"])[0].info.run_id
    bad = tmp_path / "x" / CONFIG_ARTIFACT
    bad.parent.mkdir()
    bad.write_text("- a list\n- not a config\n")
    tr.log_artifact(run, bad)
    capsys.readouterr()
    assert main(["report", str(sweep_dir), "--out", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and run in err and CONFIG_ARTIFACT in err and "list" in err

    from sweeper import yamlio

    bad.write_text("seed: 0\n" + "#" * yamlio.MAX_BYTES)
    tr.log_artifact(run, bad)
    capsys.readouterr()
    assert main(["report", str(sweep_dir), "--out", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and run in err and "larger than" in err


def test_start_child_logs_the_config_as_simulate_writes_it(tmp_path):
    from sweeper.configio import dump_config
    from sweeper.tracking import CONFIG_ARTIFACT, Tracker, default_uri

    tr = Tracker(default_uri(tmp_path))
    tr.init_store()
    exp = tr.experiment("e", (tmp_path / "artifacts").as_uri())
    parent = tr.start_parent(exp, "s")
    cfg = _cfg(0, 0.0)
    run = tr.start_child(exp, parent, "s", "k", "n", flatten(cfg), pending=True, config=cfg)
    assert tr.read_artifact(run, CONFIG_ARTIFACT, 1 << 20).decode() == dump_config(cfg)
    bare = tr.start_child(exp, parent, "s", "k2", "n2", flatten(cfg))
    assert tr.read_artifact(bare, CONFIG_ARTIFACT, 1 << 20) is None


# -- read-only commands are bounded when the server is down -----------------------------
@pytest.fixture
def no_http_settings(monkeypatch):
    for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT",
              "MLFLOW_TRACKING_URI"):
        monkeypatch.setenv(k, "x")  # so that monkeypatch removes what the command sets
        monkeypatch.delenv(k)


def test_read_only_tracker_bounds_mlflow_http_retries_unless_the_user_set_them(
        no_http_settings, monkeypatch):
    from sweeper.tracking import READ_ONLY_HTTP_ENV, Tracker

    Tracker("http://127.0.0.1:1")
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ  # a sweep keeps MLflow's
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "33")
    Tracker("http://127.0.0.1:1", read_only=True)
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == READ_ONLY_HTTP_ENV["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "33"


def test_report_on_a_dead_server_is_one_line_with_bounded_retries(tmp_path, no_http_settings, capsys):
    from sweeper.cli import main
    from sweeper.tracking import READ_ONLY_HTTP_ENV

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["report", "s", "--tracking-uri", f"http://127.0.0.1:{port}",
                 "--out", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot read its MLflow store" in err
    for k, v in READ_ONLY_HTTP_ENV.items():
        assert os.environ[k] == v


@pytest.mark.slow
def test_the_sweeps_own_report_keeps_mlflows_retries_for_its_later_writes(tmp_path, no_http_settings):
    """The driver reports at the end of a sweep (`landing.summarise`), then closes the
    parent run: that write keeps MLflow's full retries."""
    from sweeper.report.load import load_sweeps

    sweep_dir = _store(tmp_path, "s", True)
    load_sweeps([str(sweep_dir)], read_only=False)
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ
    load_sweeps([str(sweep_dir)])
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" in os.environ
