"""The GPU check's logic on a CPU (issue 11, item 5): its dry run goes through the same
shell script, steps and summary code as the real one on the GPU machine, with tiny sizes;
plus the time box that keeps one hung step from taking the others' results."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    sys.path.insert(0, str(BENCH))  # the bench scripts import their sibling timebox.py
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(BENCH))
    return mod


def test_timebox_stops_a_hung_step_and_keeps_its_output():
    timebox = _load("timebox")
    code = "import time; print('started', flush=True); time.sleep(60)"
    run = timebox.run_limited([sys.executable, "-c", code], limit_s=1.5, echo=None)
    assert run.timed_out and run.returncode is None and not run.ok
    assert run.lines == ["started"]
    assert run.seconds < 30  # killed at ~1.5 s (+ up to 5 s of grace), far from the 60 s sleep


def test_timebox_reports_a_failing_step():
    timebox = _load("timebox")
    run = timebox.run_limited([sys.executable, "-c", "import sys; print('x'); sys.exit(3)"], limit_s=30, echo=None)
    assert (run.returncode, run.timed_out, run.ok, run.lines) == (3, False, False, ["x"])


def test_scale_rejects_a_population_smaller_than_the_cohort(capsys):
    scale = _load("scale")
    with pytest.raises(SystemExit) as e:
        scale.parse_args(["--sizes", "10,30", "--population", "20"])
    assert e.value.code == 2
    assert "--population 20 < the largest cohort 30" in capsys.readouterr().err
    assert scale.parse_args(["--max-clients", "100"]).sizes == [10, 30, 100]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_real_check_refuses_to_run_without_cuda(tmp_path):
    r = subprocess.run([sys.executable, str(BENCH / "device_check.py"), "--out", str(tmp_path)],
                       capture_output=True, text=True, cwd=REPO, env={**os.environ, "DEVICE_CHECK_DRY": ""})
    assert r.returncode == 2
    assert "no CUDA device" in r.stderr
    assert not (tmp_path / "summary.json").exists()


@pytest.mark.parametrize("lines, status, counts", [
    (["..", "2 passed, 301 deselected in 4.20s"], None, {"passed": 2, "deselected": 301}),
    (["s", "1 skipped, 301 deselected in 3.00s"], "skipped", {"skipped": 1, "deselected": 301}),
    (["F.", "1 failed, 1 passed, 1 error in 9.10s"], None, {"failed": 1, "passed": 1, "error": 1}),
])
def test_gpu_tests_step_reads_the_pytest_summary_line(tmp_path, lines, status, counts):
    dc, timebox = _load("device_check"), _load("timebox")
    plan = dc.Plan(dry=False, device="cuda", out=tmp_path, python=sys.executable)
    figures = dc.gpu_tests_figures(plan, timebox.StepRun(0, 1.0, False, lines))
    assert figures["counts"] == counts
    assert figures.get("status") == status


# The device tool brings back at most 8 files, named in letters, digits, '.', '_', '-'.
_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


@pytest.mark.slow
def test_dry_run_writes_the_summary_with_every_step(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    r = subprocess.run(["bash", str(BENCH / "device_check.sh"), "--dry-run"], capture_output=True, text=True,
                       cwd=tmp_path, env=env, timeout=540)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]

    files = sorted(p.name for p in out.iterdir())
    assert set(files) == {"summary.json", "summary.md", "device_check.log", "round_speed.json", "scale.json",
                          "paper_trial.json"}
    assert len(files) <= 8 and all(_NAME.match(f) for f in files)

    s = json.loads((out / "summary.json").read_text())
    assert s["device_check"]["dry_run"] is True
    assert 0 < s["device_check"]["wall_s"] <= s["device_check"]["budget_s"]
    assert {"python", "torch", "pydantic", "device", "cpu"} <= s["machine"].keys()
    steps = s["steps"]
    assert list(steps) == ["gpu_tests", "round_speed", "scale", "paper_trial"]
    for name, st in steps.items():
        assert st["status"] in ("ok", "skipped"), (name, st)
        assert st["seconds"] >= 0

    cuda = torch.cuda.is_available()
    if not cuda:  # the CUDA-only parts say so
        assert steps["gpu_tests"]["status"] == "skipped"
        assert steps["gpu_tests"]["reason"].startswith("no CUDA device here")
        assert "pytest -m gpu" in steps["gpu_tests"]["reason"]
        assert "tf32 is CUDA-only" in steps["round_speed"]["note"]

    rs = steps["round_speed"]
    assert rs["floor_s_per_round"] > 0 and rs["sequential_s_per_round"] > 0 and rs["vectorized_s_per_round"] > 0
    assert set(rs["rounds_per_s"]) == ({"vectorized/fp32", "vectorized/tf32", "vectorized/bf16"} if cuda
                                       else {"vectorized/fp32"})
    assert all(v > 0 for v in rs["rounds_per_s"].values())

    cells = {(c["backend"], c["clients"]): c for c in steps["scale"]["rows"]}
    assert set(cells) == {(b, n) for b in ("vectorized", "sequential") for n in (2, 4)}
    for c in cells.values():
        assert c["error"] is None and c["s_per_round"] > 0
        assert c["server_s_per_round"] == pytest.approx(c["s_per_round"] - c["train_s_per_round"])
    assert all(cells[(b, 2)]["per_client_vs_ref"] == 1.0 for b in ("vectorized", "sequential"))  # 2 is the ref

    pt = steps["paper_trial"]
    assert pt["rounds_done"] == 3 and pt["stopped_early"] is False and pt["rounds_per_s"] > 0
    assert 0 <= pt["main_acc"] <= 1 and 0 <= pt["backdoor_acc"] <= 1
    assert pt["workload"]["frequency"] == 1 and pt["workload"]["attack"] == "model-replacement"
    trial = json.loads((out / "paper_trial.json").read_text())
    assert [h["round"] for h in trial["history"]] == [2, 3]  # eval every 2, and the last round

    md = (out / "summary.md").read_text()
    assert md.startswith("# Device check (DRY RUN)")
    for name in steps:
        assert f"| {name} | {steps[name]['status']} |" in md
    log = (out / "device_check.log").read_text()
    assert "## paper_trial: ok" in log
