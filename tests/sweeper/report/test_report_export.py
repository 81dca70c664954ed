"""`fl-sweep export`: a sweep's runs as plain directories that `fl-sweep report` reads back
to the same cells and numbers, deduplicated against the live sweep, replaced atomically;
never over a sweep, a user's directory or another sweep's export (sweeper/outputs.py);
credentials in --tracking-uri never printed."""

from __future__ import annotations

import json
import shutil
import socket
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from sweeper.cli import main
from sweeper.outputs import MARKER
from sweeper.report.export import export_sweep, load_for_export, write_run_dir
from sweeper.report.load import ReportError, load_sweeps
from sweeper.report.stats import cell_summary

pytestmark = pytest.mark.slow  # the MLflow fixture builds a sqlite store


def _by_trial(data) -> pd.DataFrame:
    """The metrics keyed by (trial key, round) instead of the source's run ids."""
    m = data.metrics.merge(data.runs[["run_id", "trial_key"]].reset_index(drop=True), on="run_id")
    cols = sorted(c for c in m.columns if c not in ("run_id", "trial_key", "round"))
    return m.set_index(["trial_key", "round"]).sort_index()[cols]


def test_an_export_reports_the_same_cells_and_numbers(tmp_path, mlflow_sweep):
    root, sweep_dir, uri, parent = mlflow_sweep
    live = load_sweeps([str(sweep_dir)])
    e = export_sweep(load_for_export(str(sweep_dir)), tmp_path / "exported")
    assert e.sweep == "fig4b-mini" and e.statuses == {"finished": 4} and e.rounds == 20
    assert sorted(p.name for p in e.path.iterdir() if p.name != MARKER) == sorted(
        f"trial_{k[:16]}" for k in live.runs["trial_key"])
    back = load_sweeps([str(e.path)])
    assert back.parents == ()  # no store behind an export
    assert back.cells() == live.cells() == ["σ=0", "σ=0.025"]
    assert sorted(back.runs["trial_key"]) == sorted(live.runs["trial_key"])
    assert set(back.runs["status"]) == {"finished"}
    # every logged value comes back exactly (JSON keeps a float64's 17 significant digits)
    pd.testing.assert_frame_equal(_by_trial(back), _by_trial(live), check_like=True)
    pd.testing.assert_frame_equal(cell_summary(back), cell_summary(live))


def test_an_export_merged_with_its_live_sweep_counts_each_run_once(tmp_path, mlflow_sweep):
    root, sweep_dir, uri, parent = mlflow_sweep
    e = export_sweep(load_for_export("fig4b-mini", storage_root=str(root)), tmp_path / "exported")
    both = load_sweeps([str(sweep_dir), str(e.path)])
    assert len(both.runs) == 4
    assert any("4 duplicate run(s)" in n for n in both.notes)


def test_exporting_again_replaces_the_earlier_export_whole(tmp_path, mlflow_sweep):
    root, sweep_dir, uri, parent = mlflow_sweep
    out = tmp_path / "exported"
    loaded = load_for_export(str(sweep_dir))
    # the earlier export held a run the store no longer has (deleted there since)
    gone = dict(loaded.runs[0], run_id="gone", trial_key=None)
    earlier = replace(loaded, runs=[*loaded.runs, gone],
                      rows={**loaded.rows, "gone": loaded.rows[loaded.runs[0]["run_id"]]})
    first = export_sweep(earlier, out)
    assert len([p for p in first.path.iterdir() if p.name != MARKER]) == 5
    second = export_sweep(loaded, out)
    assert second.path == first.path
    assert sorted(p.name for p in second.path.iterdir() if p.name != MARKER) == sorted(
        f"trial_{r['trial_key'][:16]}" for r in loaded.runs)
    assert sorted(p.name for p in out.iterdir()) == ["fig4b-mini"]  # no temporary left
    assert second.path.stat().st_mode & 0o777 == 0o755  # not mkdtemp's 0700


def test_a_failed_export_leaves_the_earlier_one_in_place(tmp_path, mlflow_sweep, monkeypatch):
    import sweeper.report.export as export

    root, sweep_dir, uri, parent = mlflow_sweep
    out = tmp_path / "exported"
    first = export_sweep(load_for_export(str(sweep_dir)), out)
    before = sorted(p.name for p in first.path.iterdir())
    calls = []

    def fail_on_third(d, run, rows):  # a crash half-way through the new export
        calls.append(d)
        if len(calls) == 3:
            raise OSError("disk full")
        return write_run_dir(d, run, rows)

    monkeypatch.setattr(export, "write_run_dir", fail_on_third)
    with pytest.raises(OSError, match="disk full"):
        export_sweep(load_for_export(str(sweep_dir)), out)
    assert sorted(p.name for p in first.path.iterdir()) == before
    assert sorted(p.name for p in out.iterdir()) == ["fig4b-mini"]


def test_a_config_that_does_not_hash_to_its_trial_key_is_refused(tmp_path):
    run = {"run_id": "r1", "sweep": "s", "source": "store#r1", "status": "finished",
           "trial_key": "0" * 64, "seed": 0, "data.source": "embedded"}
    with pytest.raises(ReportError, match="not to its trial key"):
        write_run_dir(tmp_path / "t", run, [{"run_id": "r1", "round": 1, "main_acc": 0.5}])
    assert not (tmp_path / "t").exists()


def test_the_cli_exports_and_names_a_missing_sweep(tmp_path, mlflow_sweep, capsys):
    root, sweep_dir, uri, parent = mlflow_sweep
    out = tmp_path / "exported"
    assert main(["export", "fig4b-mini", "--storage", str(root), "--out", str(out)]) == 0
    assert "fig4b-mini: 4 runs (4 finished), 20 evaluated rounds" in capsys.readouterr().out
    status = json.loads(next((out / "fig4b-mini").iterdir()).joinpath("status.json").read_text())
    assert status["status"] == "finished" and status["sweep"] == "fig4b-mini"
    assert main(["export", "no-such-sweep", "--storage", str(root), "--out", str(out)]) == 2
    assert "no-such-sweep" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["fig4b-mini"]
    # a bad name after a good one: nothing is written, not even the good one
    fresh = tmp_path / "fresh"
    assert main(["export", "fig4b-mini", "no-such-sweep", "--storage", str(root), "--out", str(fresh)]) == 2
    assert "no-such-sweep" in capsys.readouterr().err and not fresh.exists()


# ------------------------------------------------------------------ outputs: never over data
def _snapshot(d: Path) -> dict[str, bytes]:
    """Every file under `d` with its bytes: equal snapshots = nothing touched."""
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _one_line(err: str) -> str:
    """stderr of a refused command: exactly one line, the CLI's, no traceback."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fl-sweep: error: "), err
    return lines[0]


@pytest.fixture
def own_storage(tmp_path, mlflow_sweep):
    """A copy of the module's storage root (sweep dir, manifest, store) that a test may
    lose: the old `export --out S` deleted the sweep under S."""
    root, sweep_dir, uri, parent = mlflow_sweep
    s = tmp_path / "S"
    shutil.copytree(root, s)
    return s


def test_export_out_the_storage_root_exits_2_and_touches_nothing(own_storage, capsys):
    before = _snapshot(own_storage)
    assert main(["export", "fig4b-mini", "--storage", str(own_storage), "--out", str(own_storage)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"--out {own_storage}: is the sweep storage root" in line
    assert _snapshot(own_storage) == before


@pytest.mark.parametrize("where", ["sweep", "inside", "around"])
def test_export_out_in_or_around_a_sweep_is_refused(own_storage, capsys, where):
    out = {"sweep": own_storage / "fig4b-mini", "inside": own_storage / "fig4b-mini" / "x",
           "around": own_storage.parent}[where]
    before = _snapshot(own_storage)
    # the sweep given by its directory (no --storage): found by its sweep.json
    assert main(["export", str(own_storage / "fig4b-mini"), "--out", str(out)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert {"sweep": "is the source", "inside": "is inside the source",
            "around": "contains the source"}[where] in line
    assert _snapshot(own_storage) == before and not (own_storage / "fig4b-mini" / "x").exists()


def test_export_over_a_users_directory_of_the_sweeps_name_is_refused(tmp_path, mlflow_sweep, capsys):
    root, sweep_dir, uri, parent = mlflow_sweep
    out = tmp_path / "out"
    mine = out / "fig4b-mini"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("my notes")
    assert main(["export", "fig4b-mini", "--storage", str(root), "--out", str(out)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"--out {mine}: an existing directory this tool did not create" in line
    assert "notes.txt" in line and "never replaced" in line
    assert _snapshot(out) == {"fig4b-mini/notes.txt": b"my notes"}
    assert sorted(p.name for p in out.iterdir()) == ["fig4b-mini"]  # no temporary left


def test_a_file_added_to_an_earlier_export_keeps_it_from_being_replaced(tmp_path, mlflow_sweep, capsys):
    root, sweep_dir, uri, parent = mlflow_sweep
    out = tmp_path / "out"
    assert main(["export", "fig4b-mini", "--storage", str(root), "--out", str(out)]) == 0
    (out / "fig4b-mini" / "analysis.ipynb").write_text("{}")
    before = _snapshot(out)
    capsys.readouterr()
    assert main(["export", "fig4b-mini", "--storage", str(root), "--out", str(out)]) == 2
    assert "analysis.ipynb, which this tool did not write" in _one_line(capsys.readouterr().err)
    assert _snapshot(out) == before


@pytest.mark.parametrize("kind", ["file", "under a file", "symlink loop"])
def test_export_out_that_is_no_directory_is_one_line_exit_2(tmp_path, mlflow_sweep, capsys, kind):
    root, sweep_dir, uri, parent = mlflow_sweep
    (tmp_path / "afile").write_text("keep")
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    out = {"file": tmp_path / "afile", "under a file": tmp_path / "afile" / "sub",
           "symlink loop": tmp_path / "loop1"}[kind]
    assert main(["export", "fig4b-mini", "--storage", str(root), "--out", str(out)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"--out {out}: " in line
    assert {"file": "is a file, not a directory", "under a file": f"{tmp_path / 'afile'} is a file",
            "symlink loop": "cannot be resolved"}[kind] in line
    assert (tmp_path / "afile").read_text() == "keep"


def _two_sweeps_named_runs(tmp_path, run_writer):
    for parent, seed in (("a", 0), ("b", 1)):
        run_writer(tmp_path / parent / "runs" / "r", {"fl.rounds": 2}, seed,
                   {"main_acc": [0.5, 0.6], "backdoor_acc": [0.1, 0.2]})
    return tmp_path / "a" / "runs", tmp_path / "b" / "runs"


def test_two_sources_of_one_name_in_one_export_are_refused_before_writing(tmp_path, run_writer, capsys):
    a, b = _two_sweeps_named_runs(tmp_path, run_writer)
    out = tmp_path / "out"
    assert main(["export", str(a), str(b), "--out", str(out)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"`{a}` and `{b}` are both sweeps named 'runs'" in line
    assert not out.exists()


def test_another_sweep_of_the_same_name_does_not_replace_an_export(tmp_path, run_writer, capsys):
    a, b = _two_sweeps_named_runs(tmp_path, run_writer)
    out = tmp_path / "out"
    assert main(["export", str(a), "--out", str(out)]) == 0
    before = _snapshot(out)
    assert main(["export", str(b), "--out", str(out)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"holds the export of directory {a}, not of directory {b}" in line
    assert _snapshot(out) == before
    assert main(["export", str(a), "--out", str(out)]) == 0  # the same sweep again: replaced


def _closed_port() -> int:
    """A port on 127.0.0.1 nobody listens on: connecting is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def no_mlflow_credentials(monkeypatch):
    """MLflow's credential variables unset, and unset again after the test (the command
    sets them; monkeypatch restores what it saw, so each is set once, then removed)."""
    for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
              "MLFLOW_TRACKING_URI"):
        monkeypatch.setenv(k, "x")
        monkeypatch.delenv(k)
    # one attempt: the server is known to be down (MLflow retries 7 times by default)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")


def test_export_never_prints_the_tracking_uris_credentials(tmp_path, no_mlflow_credentials, capsys):
    import os

    uri = f"https://alice:hunter2pw@127.0.0.1:{_closed_port()}/?token=s3cr3ttok"
    assert main(["export", "fig4b-mini", "--tracking-uri", uri, "--out", str(tmp_path / "x")]) == 2
    out, err = capsys.readouterr()
    assert "cannot read its MLflow store" in _one_line(err)
    for secret in ("hunter2pw", "s3cr3ttok"):
        assert secret not in out + err
    # they travel in MLflow's variables, as with `run`
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "hunter2pw"
    assert os.environ["MLFLOW_TRACKING_TOKEN"] == "s3cr3ttok"
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("name", ["../evil", "a/b", ".hidden", "two\nlines"])
def test_a_sweep_name_that_is_no_plain_file_name_is_refused(tmp_path, mlflow_sweep, name):
    """A sweep's name comes from its store (a tag anyone can set) or a directory someone sent:
    it must not steer the export out of --out."""
    root, sweep_dir, uri, parent = mlflow_sweep
    out = tmp_path / "out" / "here"
    with pytest.raises(ReportError, match="cannot name a directory"):
        export_sweep(replace(load_for_export(str(sweep_dir)), name=name), out)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == []
