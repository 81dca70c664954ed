"""`fl-sweep export`: a sweep's runs as plain directories that `fl-sweep report` reads back
to the same cells and numbers, deduplicated against the live sweep, replaced atomically."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from sweeper.cli import main
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
    assert sorted(p.name for p in e.path.iterdir()) == sorted(
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
    first = export_sweep(load_for_export(str(sweep_dir)), out)
    stray = first.path / "trial_stale"
    stray.mkdir()  # as if the earlier export held a run the store no longer has
    second = export_sweep(load_for_export(str(sweep_dir)), out)
    assert second.path == first.path and not stray.exists()
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
