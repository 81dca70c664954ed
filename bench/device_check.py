"""The GPU check in one command (issue 11, item 5): everything a lent GPU machine should
measure, time-boxed so it fits the lease, with a summary written to $OUT.

Steps, each a child process with its own wall-clock limit (a step that fails or hangs
loses only its own figures), all inside --budget seconds:
  gpu_tests     `pytest -m gpu` over tests/fl_core and tests/bench (the CUDA-marked tests)
  round_speed   bench/round_speed.py on CUDA: bare-SGD floor, sequential vs vectorized
                s/round, then rounds/s of the vectorized backend at fp32, tf32 and bf16
  scale         bench/scale.py on CUDA: s/round and per-client cost at 10 → 1,000 clients
  paper_trial   bench/paper_trial.py: 300 rounds × 5 epochs × 30 clients, fig 1's
                fixed-frequency cell, with a wall-clock cap; rounds/s and final accuracies

The GPU machine has torch, numpy, h5py, pandas, matplotlib and pyyaml but no pydantic (which
fl_core needs), ray or mlflow: `bench/device_check.sh` installs the carried pydantic wheels
first and then runs this script, which imports only fl_core. `--dry-run` (or
DEVICE_CHECK_DRY=1) runs every step with tiny sizes on whatever device there is (about 45
CPU-seconds, mostly six torch imports); the CUDA-only parts say so in the summary.

Writes to --out (default $OUT, else runs/device_check): summary.json, summary.md, and the
steps' own round_speed.json, scale.json, paper_trial.json (the device tool returns at
most 8 files; device_check.sh adds device_check.log).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
for p in (str(REPO), str(BENCH)):
    if p not in sys.path:
        sys.path.insert(0, p)

from timebox import StepRun, run_limited  # noqa: E402

STEP_NAMES = ("gpu_tests", "round_speed", "scale", "paper_trial")
STATUSES = ("ok", "failed", "timeout", "skipped")
BUDGET_S = 540      # 9 minutes of the 15-minute lease; the machine's start-up takes the rest
DRY_BUDGET_S = 420  # a ceiling for the dry run (about 45 CPU-seconds; minutes on a loaded shared CPU)


@dataclass(frozen=True)
class Step:
    """One step: its wall-clock cap, its command, and how to read its figures."""

    name: str
    cap_s: float
    command: Callable[["Plan"], list[str] | str]  # a str is a reason to skip it
    figures: Callable[["Plan", StepRun], dict[str, Any]]


@dataclass(frozen=True)
class Plan:
    dry: bool
    device: str
    out: Path
    python: str


# -- (a) the CUDA-marked tests ------------------------------------------------------------
GPU_TESTS = ["-m", "pytest", "-m", "gpu", "tests/fl_core", "tests/bench", "-q", "-rs", "-p", "no:cacheprovider"]


def gpu_tests_command(plan: Plan) -> list[str] | str:
    if plan.device != "cuda":  # they would only skip themselves, after seconds of collection
        return f"no CUDA device here: the CUDA-marked tests not run (on the GPU machine: python {' '.join(GPU_TESTS)})"
    try:
        import pytest  # noqa: F401
    except ImportError:
        return "pytest is not installed here (the CUDA-marked tests need it; carry its wheels to run them)"
    return [plan.python, *GPU_TESTS]


_PYTEST_COUNTS = re.compile(r"(\d+) (passed|failed|skipped|deselected|errors?|xfailed|xpassed)")


def gpu_tests_figures(plan: Plan, run: StepRun) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for line in reversed(run.lines):
        found = _PYTEST_COUNTS.findall(line)
        if found and (" in " in line or line.startswith("=")):
            counts = {k.rstrip("s") if k.startswith("error") else k: int(n) for n, k in found}
            break
    out: dict[str, Any] = {"counts": counts, "tail": run.lines[-15:]}
    if run.returncode == 0 and counts.get("passed", 0) == 0 and counts.get("skipped", 0) > 0:
        out["status"] = "skipped"
        out["reason"] = f"all {counts['skipped']} CUDA-marked test(s) skipped themselves (see tail)"
    elif not counts:
        out["error"] = "no pytest summary line (see tail)"
    return out


# -- (b) round_speed on CUDA --------------------------------------------------------------
def round_speed_command(plan: Plan) -> list[str]:
    cmd = [plan.python, str(BENCH / "round_speed.py"), "--device", plan.device, "--no-ray", "--no-flower",
           "--backends", "sequential,vectorized", "--throughput-backends", "vectorized",
           "--json", str(plan.out / "round_speed.json")]
    if plan.dry:
        return cmd + ["--smoke", "--cpus", "1"]
    return cmd + ["--rounds", "3", "--warmup", "1", "--throughput", "--throughput-rounds", "30", "--eval-every", "10"]


def _median_of(r: Any) -> float | None:
    xs = r.get("round_s") if isinstance(r, dict) else None
    return statistics.median(xs) if xs else None


def round_speed_figures(plan: Plan, run: StepRun) -> dict[str, Any]:
    path = plan.out / "round_speed.json"
    if not path.exists():
        return {"error": "round_speed.py wrote no JSON"}
    r = json.loads(path.read_text())
    out: dict[str, Any] = {
        "floor_s_per_round": _median_of(r.get("floor_1p1t")),
        "sequential_s_per_round": _median_of(r.get("backend_sequential")),
        "vectorized_s_per_round": _median_of(r.get("backend_vectorized")),
        "steps_per_round": r.get("workload", {}).get("steps_per_round"),
        "rounds_per_s": {k: v["rounds_per_s"] for k, v in (r.get("throughput") or {}).items()
                         if isinstance(v, dict) and "rounds_per_s" in v},
        "skipped_rows": {k: v["skipped"] for k, v in r.items() if isinstance(v, dict) and "skipped" in v},
    }
    for k in ("sequential", "vectorized"):
        s, f = out[f"{k}_s_per_round"], out["floor_s_per_round"]
        out[f"{k}_x_floor"] = s / f if s and f else None
    if plan.device != "cuda":
        out["note"] = ("no CUDA device: fp32 only here, CPU floor (tf32 is CUDA-only; bf16 on a CPU: "
                       "round_speed.py --precisions fp32,bf16)")
    return out


# -- (c) the cohort-scaling benchmark -----------------------------------------------------
def scale_command(plan: Plan) -> list[str]:
    cmd = [plan.python, str(BENCH / "scale.py"), "--device", plan.device, "--backends", "vectorized,sequential",
           "--json", str(plan.out / "scale.json")]
    if plan.dry:
        return cmd + ["--sizes", "2,4", "--examples", "10", "--rounds", "1", "--warmup", "0", "--timeout", "60"]
    # each backend gets half the step's cap (vectorized first: the GPU's default path)
    return cmd + ["--sizes", "10,30,100,300,1000", "--examples", "100", "--rounds", "2", "--warmup", "1",
                  "--timeout", str(int(STEPS_BY_NAME["scale"].cap_s / 2 - 5))]


def scale_figures(plan: Plan, run: StepRun) -> dict[str, Any]:
    path = plan.out / "scale.json"
    if not path.exists():
        return {"error": "scale.py wrote no JSON"}
    r = json.loads(path.read_text())
    rows = []
    for b in r["backends"].values():
        for c in b["cells"]:
            rows.append({k: c.get(k) for k in ("backend", "clients", "s_per_round", "train_s_per_round",
                                               "server_s_per_round", "s_per_client", "per_client_vs_ref", "ref_clients",
                                               "per_image_vs_ref", "peak_rss_mb", "peak_gpu_mb", "error")})
    return {"rows": rows, "stopped": {k: b["stopped"] for k, b in r["backends"].items() if b.get("stopped")}}


# -- (d) one paper-length trial -----------------------------------------------------------
def paper_trial_command(plan: Plan) -> list[str]:
    cmd = [plan.python, str(BENCH / "paper_trial.py"), "--device", plan.device,
           "--json", str(plan.out / "paper_trial.json")]
    if plan.dry:
        return cmd + ["--rounds", "3", "--epochs", "1", "--clients", "4", "--frequency", "1", "--eval-every", "2",
                      "--eval-subsample", "200", "--max-seconds", "60"]
    # the cap leaves 20 s for the round in progress and the final evaluation
    return cmd + ["--eval-every", "10", "--max-seconds", str(int(STEPS_BY_NAME["paper_trial"].cap_s - 20))]


def paper_trial_figures(plan: Plan, run: StepRun) -> dict[str, Any]:
    path = plan.out / "paper_trial.json"
    if not path.exists():
        return {"error": "paper_trial.py wrote no JSON"}
    r = json.loads(path.read_text())
    keys = ("rounds_done", "rounds_per_s", "main_acc", "backdoor_acc", "backdoor_acc_heldout", "stopped_early",
            "startup_s", "loop_s", "projected_full_s", "backend", "precision", "peak_gpu_mb", "workload")
    out = {k: r.get(k) for k in keys}
    if run.timed_out:  # killed from outside: the JSON is the last progress written
        out["note"] = f"killed at the step's limit; figures as of round {r.get('rounds_done')}"
    return out


STEPS = (
    Step("gpu_tests", 60, gpu_tests_command, gpu_tests_figures),
    Step("round_speed", 150, round_speed_command, round_speed_figures),
    Step("scale", 150, scale_command, scale_figures),
    Step("paper_trial", 180, paper_trial_command, paper_trial_figures),
)
STEPS_BY_NAME = {s.name: s for s in STEPS}


# -- machine, summary ---------------------------------------------------------------------
def machine(device: str) -> dict[str, Any]:
    import numpy
    import pydantic
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
        "pydantic": f"{pydantic.VERSION} ({Path(pydantic.__file__).parent.parent})",
        "cpu": _cpu_model(), "cores": os.cpu_count(), "device": device,
    }
    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), cuda=torch.version.cuda,
                    multiprocessors=p.multi_processor_count)
        try:
            info["nvidia_smi"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,clocks.max.sm,power.limit", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            pass
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _fmt(x: Any, spec: str = ".3f") -> str:
    return format(x, spec) if isinstance(x, (int, float)) and not isinstance(x, bool) else ("-" if x is None else str(x))


def headline(name: str, s: dict[str, Any]) -> str:
    """The step's figures in one table cell."""
    if s["status"] == "skipped" and "reason" in s:
        return s["reason"]
    if "error" in s:
        return s["error"]
    if name == "gpu_tests":
        return ", ".join(f"{n} {k}" for k, n in s.get("counts", {}).items()) or "no pytest summary line"
    if name == "round_speed":
        rps = ", ".join(f"{k} {_fmt(v, '.2f')}" for k, v in s.get("rounds_per_s", {}).items())
        return (f"s/round: floor {_fmt(s.get('floor_s_per_round'))}, sequential {_fmt(s.get('sequential_s_per_round'))} "
                f"({_fmt(s.get('sequential_x_floor'), '.2f')}× floor), vectorized {_fmt(s.get('vectorized_s_per_round'))} "
                f"({_fmt(s.get('vectorized_x_floor'), '.2f')}× floor); rounds/s with eval: {rps or '-'}")
    if name == "scale":
        parts = []
        for r in s.get("rows", []):
            if r.get("error"):
                parts.append(f"{r['backend']} {r['clients']}: {r['error']}")
        big = {}
        for r in s.get("rows", []):
            if not r.get("error") and r.get("per_client_vs_ref") is not None:
                if r["clients"] >= big.get(r["backend"], {}).get("clients", 0):
                    big[r["backend"]] = r
        parts = [f"{b}: per-client cost at {r['clients']} = {_fmt(r['per_client_vs_ref'], '.2f')}× at {r['ref_clients']}"
                 for b, r in big.items()] + parts + [f"{b}: {why}" for b, why in s.get("stopped", {}).items()]
        return "; ".join(parts) or "no cells"
    if name == "paper_trial":
        return (f"{s.get('rounds_done')} rounds{' (stopped at the cap)' if s.get('stopped_early') else ''}, "
                f"{_fmt(s.get('rounds_per_s'), '.2f')} rounds/s, main acc {_fmt(s.get('main_acc'), '.4f')}, "
                f"backdoor acc {_fmt(s.get('backdoor_acc'), '.4f')}")
    return ""


def markdown(summary: dict[str, Any]) -> str:
    m = summary["machine"]
    dc = summary["device_check"]
    where = m.get("gpu") or f"CPU {m.get('cpu')}"
    lines = [
        f"# Device check{' (DRY RUN)' if dc['dry_run'] else ''}: {where}",
        "",
        f"{dc['started']} · python {m.get('python')} · torch {m.get('torch')} · pydantic {m.get('pydantic')}"
        + (f" · CUDA {m['cuda']} · {m.get('nvidia_smi', '')}" if m.get("cuda") else ""),
        f"Wall time {_fmt(dc.get('wall_s'), '.0f')} s of a {dc['budget_s']} s budget.",
        "",
        "| step | status | seconds | figures |",
        "|---|---|---|---|",
    ]
    for name in STEP_NAMES:
        s = summary["steps"].get(name)
        if s is None:
            lines.append(f"| {name} | not run | - | |")
            continue
        lines.append(f"| {name} | {s['status']} | {_fmt(s.get('seconds'), '.1f')} | {headline(name, s)} |")
    scale = summary["steps"].get("scale", {})
    if scale.get("rows"):
        lines += ["", "Scale (per-client × = per-client cost ÷ that at 30 clients, else at the smallest cohort):", "",
                  "| backend | clients | s/round | train s | server s | per-client × | peak RSS MB | peak GPU MB |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in scale["rows"]:
            if r.get("error"):
                lines.append(f"| {r['backend']} | {r['clients']} | failed: {r['error']} | | | | | |")
            else:
                lines.append(f"| {r['backend']} | {r['clients']} | {_fmt(r['s_per_round'])} | {_fmt(r['train_s_per_round'])} "
                             f"| {_fmt(r['server_s_per_round'])} | {_fmt(r.get('per_client_vs_ref'), '.3f')} "
                             f"| {_fmt(r.get('peak_rss_mb'), ',.0f')} | {_fmt(r.get('peak_gpu_mb'), ',.0f')} |")
    return "\n".join(lines) + "\n"


def write_summary(out: Path, summary: dict[str, Any]) -> None:
    from fl_core.state import atomic_write_bytes

    blob = json.dumps(summary, indent=1, default=str).encode()
    atomic_write_bytes(out / "summary.json", lambda f: f.write(blob))
    md = markdown(summary).encode()
    atomic_write_bytes(out / "summary.md", lambda f: f.write(md))


def run_step(step: Step, plan: Plan, limit_s: float) -> dict[str, Any]:
    cmd = step.command(plan)
    if isinstance(cmd, str):
        return {"status": "skipped", "reason": cmd, "seconds": 0.0}
    if limit_s < 10:
        return {"status": "skipped", "reason": f"the check's budget is spent ({limit_s:.0f} s left)", "seconds": 0.0}
    print(f"\n## {step.name}: limit {limit_s:.0f} s: {' '.join(cmd)}", flush=True)
    run = run_limited(cmd, limit_s, cwd=str(REPO),
                      env={"PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)})
    result: dict[str, Any] = {"status": "ok" if run.ok else ("timeout" if run.timed_out else "failed"),
                              "seconds": run.seconds, "returncode": run.returncode, "limit_s": limit_s,
                              "command": " ".join(cmd)}
    if not run.ok:
        result["tail"] = run.lines[-20:]
    try:
        figures = step.figures(plan, run)
    except Exception as e:  # unreadable output: keep the status, say why
        figures = {"error": f"reading {step.name}'s output failed: {type(e).__name__}: {e}"}
    status = figures.pop("status", None)
    if status is not None and run.ok:
        result["status"] = status
    result.update(figures)
    if "error" in figures and result["status"] == "ok":
        result["status"] = "failed"
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--dry-run", action="store_true", default=os.environ.get("DEVICE_CHECK_DRY", "") not in ("", "0"),
                    help="tiny sizes on whatever device there is (also DEVICE_CHECK_DRY=1)")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or REPO / "runs" / "device_check"))
    ap.add_argument("--budget", type=float, default=None, help=f"seconds for all steps (default {BUDGET_S}, dry {DRY_BUDGET_S})")
    ap.add_argument("--steps", default=",".join(STEP_NAMES), help="comma-separated subset of " + ", ".join(STEP_NAMES))
    args = ap.parse_args(argv)
    wanted = [s for s in args.steps.split(",") if s]
    unknown = [s for s in wanted if s not in STEP_NAMES]
    if unknown:
        ap.error(f"--steps: unknown {unknown}; allowed: {', '.join(STEP_NAMES)}")
    budget = args.budget if args.budget is not None else (DRY_BUDGET_S if args.dry_run else BUDGET_S)

    t_start = time.monotonic()
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device != "cuda" and not args.dry_run:
        print("device_check: no CUDA device here; on a CPU run `bench/device_check.sh --dry-run`", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    plan = Plan(args.dry_run, device, args.out.resolve(), sys.executable)
    summary: dict[str, Any] = {
        "device_check": {"version": 1, "dry_run": args.dry_run, "budget_s": budget, "out": str(plan.out),
                         "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")},
        "machine": machine(device),
        "steps": {},
    }
    print(f"# device check{' (dry run)' if args.dry_run else ''}: {summary['machine'].get('gpu') or device}, "
          f"budget {budget:.0f} s, out {plan.out}", flush=True)
    write_summary(plan.out, summary)
    for step in STEPS:
        if step.name not in wanted:
            continue
        left = budget - (time.monotonic() - t_start)
        summary["steps"][step.name] = s = run_step(step, plan, min(step.cap_s, left))
        print(f"## {step.name}: {s['status']} in {s['seconds']:.1f} s", flush=True)
        summary["device_check"]["wall_s"] = time.monotonic() - t_start
        write_summary(plan.out, summary)
    summary["device_check"]["wall_s"] = time.monotonic() - t_start
    write_summary(plan.out, summary)
    print()
    print(markdown(summary))
    return 0 if all(s["status"] in ("ok", "skipped") for s in summary["steps"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
