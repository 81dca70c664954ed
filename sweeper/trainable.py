"""The Ray Tune function trainable: one trial = one fl_core `Simulation`.

Shape of `custom_func_checkpointing.py` in Ray's examples: read the last checkpoint with
`tune.get_checkpoint()`, loop, and `tune.report(metrics, checkpoint=...)`. The loop is
`fl_core.loop.run_loop`; `TrialSink` turns its events into MLflow and Tune calls. A report is
made on every evaluated round; the `SimulationState` is checkpointed every
`fl.checkpoint_every` rounds and after the last one. A checkpoint directory holds

    state.pt        fl_core.state.save_state (global weights, round, config hash)
    progress.json   round, the trial's MLflow child run id, its trial key
    metrics.jsonl   the evaluated rounds so far (for the artifact and the plot)

Everything random is derived from (seed, round, client), so a trial restarted from any
checkpoint replays the same rounds bit-identically; MLflow gets only the rounds it does
not already hold (see `sweeper.tracking`). A trial whose weights become NaN/inf ends as
`diverged` (a normal end for Tune: the sweep goes on); any other exception marks the run
`failed` and errors the trial, which `fl-sweep resume` retries from its last checkpoint.
Tune retries an errored trial once by itself (`sweeper.runner`), which helps with a
crashed process but never with bad input: a trial that raises a deterministic error (an
FLCoreError or SweeperError that is not `transient`: a bad config or data set) first
reports `fl_status: failed` with the one-line message, and the driver's `NoRetryOnBadInput`
callback then takes the trial's automatic retry away.

`config` (Tune's param space for one trial) is `{"trial": {...}, "sweep": {...}}`, built
by `sweeper.runner.param_space`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from typing_extensions import TypedDict  # pydantic validates this one on Python < 3.12

import ray
from ray import tune

from fl_core.config import SimulationConfig, config_hash, flatten, read_back
from fl_core.errors import DivergedError, FLCoreError
from fl_core.loop import DIVERGED, FINISHED, resume_history, run_loop
from sweeper.actors import RayActorExecutor, set_determinism
from sweeper.errors import SweeperError
from sweeper.jsonl import jsonl_text, read_jsonl
from sweeper.storage import atomic_write_text, read_json
from sweeper import tracking
from sweeper.tracking import Tracker

STATE, PROGRESS, METRICS = "state.pt", "progress.json", "metrics.jsonl"
FAILED = "failed"  # fl_status of a trial ended by bad input (reported just before it raises)


def trial_resources(config: dict[str, Any]) -> tune.PlacementGroupFactory:
    """Tune resource callback: the bundles the driver computed (and checked against the
    cluster) when the sweep started. Module-level so that it pickles by reference for
    `Tuner.restore`."""
    return tune.PlacementGroupFactory(config["trial"]["bundles"], strategy="PACK")


def trial_name(trial: Any) -> str:
    t = trial.config["trial"]
    return f"trial_{t['index']:04d}_{t['trial_key'][:8]}"




def _resolve_data(cfg: SimulationConfig, launch_cwd: str | None):
    """A relative `data.path` means relative to where the sweep was launched; Tune runs
    trials in their own directories. The config itself (and so its hash) is unchanged."""
    path = cfg.data.path
    if path and not os.path.isabs(path):
        base = os.environ.get("TUNE_ORIG_WORKING_DIR") or launch_cwd or os.getcwd()
        return cfg.data.model_copy(update={"path": os.path.join(base, path)})
    return cfg.data


def _plot(history: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    rounds = [h["round"] for h in history]
    for key, style in (("main_acc", ":"), ("backdoor_acc", "-"), ("backdoor_acc_heldout", "--")):
        ys = [h.get(key) for h in history]
        if any(y is not None for y in ys):
            ax.plot(rounds, [math.nan if y is None else y for y in ys], style, label=key)
    ax.set_xlabel("round")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _finalize(tracker: Tracker, run_id: str, history, state, status: str,
              title: str) -> None:
    """Artifacts of the child run, then close it with `status`."""
    import torch

    with tempfile.TemporaryDirectory(prefix="fl-sweep-art-") as d:
        d = Path(d)
        (d / METRICS).write_text(jsonl_text(history))
        files = [d / METRICS]
        if status == "finished":
            torch.save(state.global_params.cpu(), d / "final_weights.pt")
            files.append(d / "final_weights.pt")
        if history:
            _plot(history, d / "curves.png", title)
            files.append(d / "curves.png")
        for f in files:
            tracker.log_artifact(run_id, f)
    tracker.finish(run_id, status)


class Progress(TypedDict):
    """progress.json of a trial's checkpoint (read back: untrusted, so checked)."""

    round: int
    run_id: str
    trial_key: str


def _save_checkpoint(d: Path, state, run_id: str, trial_key: str, history) -> None:
    from fl_core.state import save_state

    save_state(d / STATE, state)
    atomic_write_text(d / PROGRESS, json.dumps(
        {"round": state.round_idx, "run_id": run_id, "trial_key": trial_key}, sort_keys=True))
    atomic_write_text(d / METRICS, jsonl_text(history))


class TrialSink:
    """`fl_core.loop.RunSink` of one trial: every evaluated round goes to MLflow (unless a
    previous attempt logged it already) and to Tune; on checkpoint rounds the one Tune
    report carries the checkpoint; the end closes the MLflow run with its status."""

    def __init__(self, tracker: Tracker, run_id: str, cfg: SimulationConfig, trial_key: str,
                 logged: int, title: str):
        self.tracker, self.run_id, self.cfg, self.trial_key = tracker, run_id, cfg, trial_key
        self.logged, self.title = logged, title
        self.pending: dict[str, Any] | None = None  # this round's report, sent with its checkpoint
        self.reported = False

    def _report(self, metrics: dict[str, Any], status: str) -> dict[str, Any]:
        return {**metrics, "rounds_total": self.cfg.fl.rounds, "fl_status": status, "run_id": self.run_id}

    def on_round(self, round_num: int, metrics: dict | None, checkpoint_due: bool) -> None:
        if metrics is not None and round_num > self.logged:
            self.tracker.log_metrics(self.run_id, metrics, step=round_num)
        done = round_num >= self.cfg.fl.rounds
        report = self._report(metrics or {"round": round_num}, FINISHED if done else "running")
        if checkpoint_due:
            self.pending = report
        elif metrics is not None:
            tune.report(report)
            self.reported = True

    def on_checkpoint(self, state, history: list[dict]) -> None:
        with tempfile.TemporaryDirectory(prefix="fl-sweep-ckpt-") as d:
            _save_checkpoint(Path(d), state, self.run_id, self.trial_key, history)
            tune.report(self.pending, checkpoint=tune.Checkpoint.from_directory(d))
        self.pending, self.reported = None, True

    def on_end(self, status: str, state, history: list[dict], error: DivergedError | None) -> None:
        if status == DIVERGED:
            r = state.round_idx + 1
            self.tracker.set_tags(self.run_id, {tracking.DIVERGED_ROUND: str(r)})
            _finalize(self.tracker, self.run_id, history, state, DIVERGED, self.title)
            tune.report({"round": r, "rounds_total": self.cfg.fl.rounds, "fl_status": DIVERGED,
                         "error": str(error), "run_id": self.run_id})
            return
        _finalize(self.tracker, self.run_id, history, state, FINISHED, self.title)
        if not self.reported:  # restored from the final checkpoint: nothing left to run
            tune.report(self._report(history[-1] if history else {"round": state.round_idx}, FINISHED))


class NoRetryOnBadInput(tune.Callback):
    """Driver side: takes the automatic retry away from a trial that reported `fl_status:
    failed`: it is about to raise a deterministic error (bad config or data), which a retry
    would only repeat. Tune retries every trial error up to FailureConfig.max_failures and
    offers no per-exception choice; the trial's own `max_failures` is what its recovery
    decision reads. (`fl-sweep resume` still runs errored trials again, e.g. once the data
    are back.)"""

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get("fl_status") == FAILED:
            trial.max_failures = 0


def is_bad_input(e: BaseException) -> bool:
    """A deterministic error: the same input fails the same way on every try."""
    return isinstance(e, (FLCoreError, SweeperError)) and not e.transient


def train_trial(config: dict[str, Any]) -> None:
    """Run (or continue) one trial. See the module docstring."""
    try:
        _train_trial(config)
    except (FLCoreError, SweeperError) as e:
        if is_bad_input(e):
            try:  # tells the driver not to retry (runner.NoRetryOnBadInput); then the error
                tune.report({"fl_status": FAILED, "error": f"{e}"[:4000],
                             "rounds_total": config["trial"]["config"].get("fl", {}).get("rounds")})
            except Exception:  # noqa: BLE001 - the error itself is what must reach the driver
                pass
        raise


def _train_trial(config: dict[str, Any]) -> None:
    from fl_core.data import load_data
    from fl_core.simulate import Simulation
    from fl_core.state import load_state

    spec, sweep = config["trial"], config["sweep"]
    res = sweep["resources"]
    # one "Checkpoint successfully created" INFO line per checkpoint drowns the progress
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    logging.getLogger("ray.tune").setLevel(logging.WARNING)
    set_determinism(res["cpus_per_trial"], ray.get_gpu_ids())
    cfg = read_back(spec["config"])  # a sweep started by an older engine resumes as it started
    trial_key = spec["trial_key"]
    if config_hash(cfg) != trial_key:
        raise SweeperError(f"trial {spec['index']}: its config hashes to {config_hash(cfg)[:12]}, not to its "
                           f"trial key {trial_key[:12]}: written by another engine version; start a new sweep")
    tracker = Tracker(sweep["tracking_uri"])

    state, progress, history = None, {}, []
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = load_state(Path(d) / STATE, cfg)
            progress = read_json(Path(d) / PROGRESS, Progress, max_bytes=1 << 16, what="progress",
                                 expected="{round, run_id, trial_key} as the trial writes it")
            history = resume_history(read_jsonl(Path(d) / METRICS), state)  # rows a cut line lost come back

    import torch

    device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else None
    tags = {tracking.TRIAL_INDEX: str(spec["index"]), tracking.TORCH: torch.__version__,
            tracking.DEVICE: device or "cpu",
            tracking.NODE: ray.get_runtime_context().get_node_id(),
            tracking.GPU_IDS: ",".join(str(g) for g in ray.get_gpu_ids())}
    run_id = tracker.get_or_create_child(
        sweep["experiment_id"], sweep["parent_run_id"], sweep["name"], trial_key,
        run_name=f"trial-{spec['index']:04d}", params=flatten(cfg), tags=tags,
        known_run_id=progress.get("run_id"), config=cfg,
    )
    logged = tracker.last_step(run_id)  # rounds ≤ this are in MLflow already
    title = f"{sweep['name']} trial {spec['index']}: " + ", ".join(
        f"{k}={v}" for k, v in spec.get("overrides", {}).items())

    executor = None
    try:
        # inside the try: a data set that fails to load marks the MLflow run failed too
        data = load_data(_resolve_data(cfg, sweep.get("launch_cwd")), cfg.seed)
        if res["executor"] == "actors":
            gpu_share = spec["bundles"][-1].get("GPU", 0.0)
            executor = RayActorExecutor(
                cfg, ray.put(data), cfg.fl.workers, res["cpus_per_worker"], gpu_share,
                device=device,
            )
        if executor is not None:
            tracker.set_tags(run_id, {tracking.WORKER_NODES: ",".join(n for _, n in executor.where())})
        if state is None and cfg.fl.init != "random":
            # a storage-relative warm start (`warmups/<key>`) resolves against the storage
            # root; the config, and so its hash and trial key, keeps the relative form
            from fl_core.simulate import initial_state

            state = initial_state(cfg, device or "cpu", init_root=sweep.get("storage_root"))
        sim = Simulation(cfg, data=data, executor=executor, state=state)
        run_loop(sim, TrialSink(tracker, run_id, cfg, trial_key, logged, title), history)
    except BaseException as e:
        if not isinstance(e, (KeyboardInterrupt, SystemExit)):
            try:
                tracker.set_tags(run_id, {tracking.ERROR: f"{type(e).__name__}: {e}"[:4000]})
                tracker.finish(run_id, "failed")
            except Exception:
                pass
        raise
    finally:
        if executor is not None:
            executor.close()
