"""What `fl-sweep run` prints while trials run (sweeper.progress): plain lines off a
terminal — evaluated rounds only, the optional metrics when reported — and on a terminal
one live table with a row per trial and the optional columns once reported. Driven with
Tune's callback hooks directly (no cluster)."""

from __future__ import annotations

import contextlib
import io
from types import SimpleNamespace

import pytest

pytest.importorskip("ray")

from rich.console import Console  # noqa: E402

from sweeper.progress import Progress  # noqa: E402


def trial(i: int, result: dict | None = None):
    return SimpleNamespace(config={"trial": {"index": i, "trial_key": f"{i:08d}abcdef"}},
                           last_result=result or {}, path=f"/tmp/t{i}")


def feed(p: Progress) -> None:
    t0, t1 = trial(0), trial(1)
    p.on_trial_result(0, [], t0, {"round": 1, "rounds_total": 2, "fl_status": "running"})  # not evaluated
    p.on_trial_result(0, [], t0, {"round": 2, "rounds_total": 2, "fl_status": "finished",
                                  "main_acc": 0.91, "backdoor_acc": 0.25,
                                  "main_acc_clean": 0.93, "collateral_rate": 0.05})
    t0.last_result = {"fl_status": "finished"}
    p.on_trial_complete(0, [], t0)
    p.on_trial_result(0, [], t1, {"round": 1, "rounds_total": 4, "fl_status": "running",
                                  "main_acc": 0.5, "backdoor_acc": 0.0})
    p.on_trial_error(0, [], t1)


def test_plain_lines_skip_unevaluated_rounds_and_show_the_new_metrics():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        feed(Progress(3, live=False))
    lines = out.getvalue().splitlines()
    assert lines == [
        "trial   0 [00000000] round 2/2  main_acc 0.910  backdoor_acc 0.250"
        "  main_acc_clean 0.930  collateral_rate 0.050",
        "trial   0 [00000000] finished  [1/3 trials ended]",
        "trial   1 [00000001] round 1/4  main_acc 0.500  backdoor_acc 0.000",
        "trial   1 [00000001] FAILED: see /tmp/t1/error.txt  [2/3 trials ended]",
    ]
    assert not any("main_acc -" in line for line in lines)


def test_live_table_has_one_row_per_trial_and_the_optional_columns():
    buf = io.StringIO()
    con = Console(file=buf, force_terminal=True, width=140, height=40, color_system=None)
    p = Progress(3, live=True, console=con)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        feed(p)
        p.stop()
    assert out.getvalue() == ""  # nothing printed line by line
    final = p.render()
    con2 = Console(file=io.StringIO(), width=140, color_system=None)
    con2.print(final)
    text = con2.file.getvalue()
    header = text.splitlines()[0]
    for col in ("round", "main_acc", "backdoor_acc", "main_acc_clean", "collateral_rate", "state", "ETA"):
        assert col in header
    rows = [ln for ln in text.splitlines() if ln.strip()[:1].isdigit() and "│" in ln]
    assert len(rows) == 2
    assert any("FAILED" in r and "1/4" in r and "0.500" in r for r in rows)
    assert any("finished" in r and "0.930" in r and "0.050" in r for r in rows)
    assert "2/3 trials ended" in text and "1 pending" in text
    assert "FAILED trial: see /tmp/t1/error.txt" in buf.getvalue()


def test_progress_pickles_without_its_console():
    import pickle

    p = Progress(2, live=True, console=Console(file=io.StringIO(), force_terminal=True))
    q = pickle.loads(pickle.dumps(p))
    assert q.total == 2 and q.console is not None


def test_trials_are_named_by_their_varied_keys_when_the_sweep_gives_names():
    """Sweeps started by this version carry the MLflow run name (varied keys); older ones
    (no `name`) keep the key prefix."""
    named = SimpleNamespace(config={"trial": {"index": 4, "trial_key": "ab" * 32, "name": "PGD, M=3, seed=1"}},
                            last_result={}, path="/tmp/t4")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        p = Progress(1, live=False)
        p.on_trial_result(0, [], named, {"round": 2, "rounds_total": 2, "main_acc": 0.9, "backdoor_acc": 0.1})
    assert out.getvalue().startswith("trial   4 [PGD, M=3, seed=1] round 2/2")


def test_param_space_names_each_trial_like_its_mlflow_run():
    from sweeper.grid import load_grid
    from sweeper.landing import trial_name
    from sweeper.runner import param_space

    grid = load_grid("grids/smoke.yaml")
    space = param_space(grid, {}, gpus_available=False)
    names = [t["name"] for t in space["trial"]["grid_search"]]
    assert names == [trial_name(t.overrides, grid.varied_keys) for t in grid.trials]
    assert len(set(names)) == len(names) and all(names)
