"""Reading runs: `fl-sweep simulate` directories and MLflow stores (the sweeper's layout,
written with its own Tracker) into the same frames, with typed configs and grid cells."""

from __future__ import annotations

import json
import shutil

import pytest

from fl_core.config import flatten, parse_config
from sweeper.report.figures import panel_layout
from sweeper.report.load import ReportError, load_sweeps, parse_param


def test_parse_param_inverts_str():
    for v in (None, True, False, 3, 0.033, 1e-05, "fixed-frequency", "sum",
              [0.0, 0.5, 1.0, 2.0], ["a", "b"], []):
        assert parse_param(str(v)) == v
    # bracketed text that is not a list literal stays the string it was
    for text in ("[not a list]", "[1, 2", "[__import__('os')]", "[1][0]"):
        assert parse_param(text) == text


def test_simulate_dirs_typed_configs_and_cells(paper_sweep):
    data = load_sweeps([str(paper_sweep)])
    assert len(data.runs) == 34 and len(data.cells()) == 17  # 17 paper cells (2 unattacked baselines among them) × 2 seeds
    assert set(data.metrics["round"]) == set(range(1, 21))
    # typed, validated config columns (not strings), every key of the config present
    row = data.runs.iloc[0]
    assert set(flatten(parse_config({}))) <= set(data.runs.columns)
    assert row["fl.rounds"] == 20 and isinstance(row["attack.schedule"], str)
    assert data.runs["defense.noise_sigma"].dtype.kind == "f"
    assert set(data.cell_keys) == {"attack.kind", "attack.fraction", "attack.schedule",
                                   "attack.num_tasks", "defense.norm_bound", "defense.noise_sigma"}
    cells = data.cells()
    # paper order: the (three) unattacked baselines first; ε = 3.3% before 0.33%; fixed
    # before random
    assert all(c.startswith("no attack") for c in cells[:3])
    assert cells[3].startswith("unconstrained, ε=3.3%, fixed-frequency")
    assert cells[4].startswith("unconstrained, ε=3.3%, random-sampling")
    assert cells[5].startswith("unconstrained, ε=0.33%, fixed-frequency")
    assert all(data.cell_runs(c)["seed"].tolist() in ([0, 1], [1, 0]) for c in cells)
    assert data.parents == ()  # no MLflow source


def test_paper_figure_layout_rows_eps_columns_schedule(tmp_path, paper_sweep):
    fig1 = tmp_path / "fig1"
    for d in paper_sweep.glob("mr_*"):
        shutil.copytree(d, fig1 / d.name)
    data = load_sweeps([str(fig1)])
    assert data.cell_keys == ("attack.fraction", "attack.schedule")
    pos = {cell: (r, c) for r, c, cell in panel_layout(data)}
    assert pos == {"ε=3.3%, fixed-frequency": (0, 0), "ε=3.3%, random-sampling": (0, 1),
                   "ε=0.33%, fixed-frequency": (1, 0), "ε=0.33%, random-sampling": (1, 1)}


def test_duplicate_runs_across_sweeps_are_kept_once(tmp_path, paper_sweep):
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(paper_sweep / "pgd_m5", a / "pgd_m5")
    shutil.copytree(paper_sweep / "pgd_m5", b / "pgd_m5")  # fig4a and fig4b share M = 5, σ = 0
    shutil.copytree(paper_sweep / "pgd_m5_dp", b / "pgd_m5_dp")
    data = load_sweeps([str(a), str(b)])
    assert len(data.runs) == 4 and len(data.cells()) == 2
    assert any("duplicate" in n for n in data.notes)
    assert data.name == "a+b"


def test_truncated_last_line_is_skipped_corrupt_middle_line_is_an_error(tmp_path, run_writer):
    d = run_writer(tmp_path / "r", {}, 0, {"main_acc": [0.5, 0.6, 0.7], "backdoor_acc": [0, 0, 0]})
    with open(d / "metrics.jsonl", "a") as f:
        f.write('{"round": 4, "main_a')  # killed mid-write
    assert load_sweeps([str(d)]).metrics["round"].max() == 3
    lines = (d / "metrics.jsonl").read_text().splitlines()
    (d / "metrics.jsonl").write_text("\n".join([lines[0], "garbage", *lines[1:]]) + "\n")
    with pytest.raises(ReportError, match="line 2"):
        load_sweeps([str(d)])


def test_status_json_of_simulate_is_read(tmp_path, run_writer):
    d = run_writer(tmp_path / "r", {}, 0, {"main_acc": [0.5] * 3, "backdoor_acc": [0] * 3})
    assert load_sweeps([str(d)]).runs.iloc[0]["status"] == "incomplete"  # 3 of 20 rounds
    (d / "status.json").write_text(json.dumps({"status": "diverged", "round": 3}))
    assert load_sweeps([str(d)]).runs.iloc[0]["status"] == "diverged"


def test_nothing_to_report_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match="no run found"):
        load_sweeps([str(tmp_path / "empty")])
    with pytest.raises(ReportError, match="neither a directory"):
        load_sweeps(["no-such-sweep"], storage_root=str(tmp_path))


# -- MLflow (fixture `mlflow_sweep` in conftest.py) -----------------------------------
@pytest.mark.slow  # builds an MLflow sweep store
def test_mlflow_sweep_by_directory_by_name_and_by_store(mlflow_sweep):
    root, sweep_dir, uri, parent = mlflow_sweep
    for data in (load_sweeps([str(sweep_dir)]),
                 load_sweeps(["fig4b-mini"], storage_root=str(root)),
                 load_sweeps(["fig4b-mini"], tracking_uri=uri)):
        assert len(data.runs) == 4 and data.cells() == ["σ=0", "σ=0.025"]
        assert data.parents[0].run_id == parent and data.parents[0].tracking_uri == uri
        assert set(data.runs["status"]) == {"finished"}
        # params came back typed: floats, None, ints
        assert data.runs["defense.norm_bound"].tolist() == [5.0] * 4
        assert data.runs["data.path"].isna().all() and data.runs["fl.rounds"].tolist() == [5] * 4
        m = data.metrics
        assert sorted(m["round"].unique()) == [1, 2, 3, 4, 5] and len(m) == 20
        assert m["backdoor_acc_heldout"].isna().all()  # None metrics are not logged


def test_sparse_grids_flow_instead(tmp_path, paper_sweep):
    """fig 4a + baseline: a 2 × 4 grid (no attack | PGD) × (M off, 3, 5, 10) would be half
    empty, so the four panels flow in one row, baseline first."""
    d = tmp_path / "fig4a"
    for name in ("baseline", "pgd_m3", "pgd_m5", "pgd_hi_ff"):
        shutil.copytree(paper_sweep / name, d / name)
    data = load_sweeps([str(d)])
    layout = panel_layout(data)
    assert [(r, c) for r, c, _ in layout] == [(0, 0), (0, 1), (0, 2), (0, 3)]
    assert [cell for *_, cell in layout] == data.cells()
    assert data.cells()[0].startswith("no attack") and data.cells()[1].endswith("M=3")


def test_a_shared_warmup_per_seed_is_one_cell(tmp_path, run_writer):
    """A grid's warm-up is one per seed (`fl.init: warmups/<key of seed s>`): the seeds of
    one cell must not become cells of their own; a real other start (`random`) still does."""
    curves = {"main_acc": [0.9] * 3, "backdoor_acc": [0.1] * 3}
    for seed, key in ((0, "aaaa"), (1, "bbbb")):
        run_writer(tmp_path / "s" / f"w{seed}", {"fl.init": f"warmups/{key}"}, seed, curves)
    run_writer(tmp_path / "s" / "cold", {}, 0, curves)
    data = load_sweeps([str(tmp_path / "s")])
    assert len(data.cells()) == 2 and "fl.init" in data.cell_keys
    warm = [c for c in data.cells() if "warm" in c]
    assert len(warm) == 1 and sorted(data.cell_runs(warm[0])["seed"]) == [0, 1]
