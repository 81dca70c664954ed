"""Launch and resume sweeps: grid → Ray Tune `Tuner` → MLflow (what is printed about
them is `sweeper.cmd_sweep`'s; a sweep's state for `status` is `sweeper.status`).

`run_sweep` connects to Ray (a local cluster, `--address`, or the cluster of a `ray job
submit`), checks that every trial's placement group fits the cluster (Ray would
otherwise wait forever without an error), creates the sweep directory, the MLflow store,
experiment and parent run, and runs a `Tuner` over one `tune.grid_search` of the expanded
trials. `resume_sweep` re-opens the same parent run and calls `Tuner.restore(...,
resume_errored=True)`: unfinished and errored trials continue from their last checkpoint.

Both hold the sweep's lock (`sweeper.lock`) while they drive it: a second driver of
the same sweep is refused, naming the first. Nothing is written before the grid and the
cluster check pass.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from fl_core.config import parse_config
from sweeper import storage as st
from sweeper.errors import SweeperError
from sweeper.grid import Grid, bundles, name_problem, trial_rows

Echo = Callable[[str], None]


def _echo(msg: str) -> None:
    print(msg, flush=True)


@dataclass
class RayOptions:
    """How to reach Ray. `address` None: the cluster of `ray job submit` if RAY_ADDRESS is
    set, else a new local cluster with `num_cpus`/`num_gpus`/`object_store_mb`."""

    address: str | None = None
    num_cpus: int | None = None
    num_gpus: int | None = None
    object_store_mb: int | None = None


@dataclass
class SweepOutcome:
    """How a run/resume ended. `failures`: (trial label, the error's one-line message) of
    every failed trial, the original message carried across Ray (not its traceback)."""

    sweep_dir: Path
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    name: str = ""
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if self.counts.get("failed") or self.counts.get("interrupted") else 0


# -- Ray ----------------------------------------------------------------------------------


def connect(opts: RayOptions) -> bool:
    """ray.init unless already initialised (tests share one cluster). Returns whether this
    call started it, i.e. whether the caller must shut it down.

    A local cluster is token-protected (see `_protect_local_cluster`): its GCS, raylet
    and workers listen on all interfaces (Ray 2.60 offers no bind address for them:
    `_node_ip_address="127.0.0.1"` is rewritten to the host's address), so the token is
    what keeps other hosts out. Its metrics are off (`_no_metrics_export`): a Prometheus
    port answers without the token.
    """
    import ray

    if ray.is_initialized():
        return False
    existing = opts.address or os.environ.get("RAY_ADDRESS")
    if existing:
        if opts.num_cpus or opts.num_gpus or opts.object_store_mb:
            raise SweeperError("--num-cpus/--num-gpus/--object-store-mb apply only to a local "
                               "cluster, not with --address or inside `ray job submit`")
        ray.init(address=existing, logging_level="WARNING")
    else:
        _no_metrics_export()
        _protect_local_cluster()
        # Ray caches its config (auth mode, metrics) when first imported: re-read the
        # environment, as ray's own `enable_token_auth_by_default` does
        from ray._raylet import AuthenticationTokenLoader, Config

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()
        # address="local": always a new cluster; plain ray.init() would silently attach to
        # any `ray start` cluster on this machine (/tmp/ray/ray_current_cluster)
        kw: dict[str, Any] = {"address": "local", "include_dashboard": False,
                              "logging_level": "WARNING"}
        if opts.num_cpus:
            kw["num_cpus"] = opts.num_cpus
        if opts.num_gpus is not None:
            kw["num_gpus"] = opts.num_gpus
        if opts.object_store_mb:
            kw["object_store_memory"] = opts.object_store_mb * 2**20
        ray.init(**kw)
    return True


AUTH_MODE_ENV, AUTH_TOKEN_ENV = "RAY_AUTH_MODE", "RAY_AUTH_TOKEN"


def _protect_local_cluster() -> None:
    """Token authentication for the local cluster this driver starts.

    Ray 2.60 enables token auth for a new local cluster when RAY_AUTH_MODE is unset, with
    a token kept in ~/.ray/auth_token (written with the umask's permissions, so often
    readable by other users of the machine). Here the token is fresh per driver and lives
    only in this process's environment, which the cluster's processes inherit: nothing on
    disk, nothing another user can read. An explicit RAY_AUTH_MODE (e.g. `disabled` on a
    trusted, isolated machine) or RAY_AUTH_TOKEN/RAY_AUTH_TOKEN_PATH is respected.
    """
    if os.environ.get(AUTH_MODE_ENV, "token").lower() != "token":
        print(f"warning: {AUTH_MODE_ENV}={os.environ[AUTH_MODE_ENV]}: the local Ray cluster "
              "accepts connections from any host that reaches this machine", flush=True)
        return
    os.environ[AUTH_MODE_ENV] = "token"
    if not (os.environ.get(AUTH_TOKEN_ENV) or os.environ.get("RAY_AUTH_TOKEN_PATH")):
        import secrets

        os.environ[AUTH_TOKEN_ENV] = secrets.token_hex(32)


METRICS_ENV = "RAY_enable_metrics_collection"
#: the fixed Prometheus ports of the head's autoscaler monitor and dashboard head (Ray's
#: AUTOSCALER_METRIC_PORT / DASHBOARD_METRIC_PORT, read from the environment)
METRICS_PORT_ENVS = ("AUTOSCALER_METRIC_PORT", "DASHBOARD_METRIC_PORT")


def _no_metrics_export() -> None:
    """No Prometheus port on the local cluster this driver starts: they answer anyone who
    reaches the machine, without the token, and nothing here reads them (progress comes
    from Tune, results from MLflow).

    - Each node's dashboard agent exports on a port bound to all interfaces: Ray's
      `enable_metrics_collection` flag (read from the environment, which the cluster's
      processes inherit) turns it off.
    - The autoscaler monitor (44217) and the dashboard head (44227) serve theirs on
      0.0.0.0 too: Ray 2.60 binds them to loopback only when the node's IP is loopback,
      which `ray.init` rewrites to the host's address, and has no switch for them. Their
      port comes from the environment; a port no socket can have (-1) makes the bind fail,
      which Ray catches and logs in monitor.log/dashboard.log, serving nothing.

    Explicit settings of these variables (e.g. for a Prometheus that scrapes this machine)
    are respected. tests/sweeper/test_trial_errors.py lists what the cluster listens on.
    """
    os.environ.setdefault(METRICS_ENV, "0")
    for name in METRICS_PORT_ENVS:
        os.environ.setdefault(name, "-1")


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))


def check_fits(per_trial: list[tuple[str, list[dict[str, float]]]]) -> None:
    """Every trial's bundles must fit the live cluster: each bundle on some node, their
    sum within the cluster's total. Raise SweeperError naming the trial otherwise."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    total = ray.cluster_resources()
    have = ", ".join(f"{k}={v:g}" for k, v in sorted(total.items()) if k in ("CPU", "GPU"))
    for label, bs in per_trial:
        need: dict[str, float] = {}
        for b in bs:
            for k, v in b.items():
                need[k] = need.get(k, 0.0) + v
            if not any(all(n.get(k, 0.0) >= v for k, v in b.items()) for n in nodes):
                raise SweeperError(
                    f"{label}: a bundle {b} fits on no node of the cluster (largest node: "
                    f"{max((n.get('CPU', 0) for n in nodes), default=0):g} CPU); lower "
                    "resources.cpus_per_worker/cpus_per_trial/gpus_per_trial"
                )
        for k, v in need.items():
            if v > total.get(k, 0.0) + 1e-9:
                raise SweeperError(
                    f"{label} needs {k}={v:g} ({len(bs)} bundles: the trial + "
                    f"{len(bs) - 1} client workers) but the cluster has {have}; lower "
                    "resources.workers or resources.cpus_per_worker, use resources.executor: "
                    "in-process, or add nodes"
                )


def _quiet_tune() -> None:
    """Our Progress callback (sweeper.progress) shows the sweep; Tune's banner/tables and its warning about
    frequent experiment snapshots (forced by num_to_keep, cheap here) would drown it. A failed
    trial's traceback goes to its error.txt only: the end of the run prints one line per failed
    trial with the original message (`SweepOutcome.failures`)."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")


def _tune_configs(sweep_dir: Path, max_concurrent: int | None, total: int):
    from ray import tune

    from sweeper.progress import Progress
    from sweeper.trainable import NoRetryOnBadInput, trial_name

    tune_config = tune.TuneConfig(
        max_concurrent_trials=max_concurrent,
        # a finished trial's process (torch, fl_core and mlflow imported) takes the next
        # trial of the same shape: saves seconds per trial; the trainable keeps no state
        reuse_actors=True,
        trial_name_creator=trial_name,
        trial_dirname_creator=trial_name,
    )
    run_config = tune.RunConfig(
        name=st.TUNE_NAME,
        storage_path=str(sweep_dir),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        # one automatic retry (from the last checkpoint) for a crashed trial process; none
        # for bad input (NoRetryOnBadInput); errored trials wait for `fl-sweep resume`
        failure_config=tune.FailureConfig(max_failures=1),
        verbose=0,
        callbacks=[NoRetryOnBadInput(), Progress(total)],
    )
    return tune_config, run_config


def _trainable():
    from ray import tune

    from sweeper.trainable import train_trial, trial_resources

    return tune.with_resources(train_trial, trial_resources)


# -- run / resume ---------------------------------------------------------------------------


def param_space(grid: Grid, sweep: dict[str, Any], gpus_available: bool) -> dict[str, Any]:
    from ray import tune

    from sweeper.landing import trial_name

    trials = [
        {
            "index": t.index,
            "trial_key": t.trial_key,
            "name": trial_name(t.overrides, grid.varied_keys),
            "overrides": t.overrides,
            "config": t.config.model_dump(mode="json"),
            "bundles": bundles(t.config, grid.spec.resources, gpus_available),
        }
        for t in grid.trials
    ]
    return {"trial": tune.grid_search(trials), "sweep": sweep}


def run_sweep(grid: Grid, *, storage: str | None = None, name: str | None = None,
              tracking_uri: str | None = None, ray_opts: RayOptions | None = None,
              echo: Echo = _echo) -> SweepOutcome:
    """Start a new sweep of `grid`: the steps below, in this order. Everything that can
    refuse the sweep (its name, the warm-up cache, the cluster's size) runs before the
    sweep directory exists; a failure while it is set up removes it again."""
    name = name or grid.name
    root = st.storage_root(storage)
    sweep_dir = _new_sweep_dir(root, name)
    _check_warmup_cache(grid, root)
    uri = _tracking_uri(sweep_dir, tracking_uri, echo)
    _quiet_tune()
    started = connect(ray_opts or RayOptions())
    lock = None
    try:
        gpus = _check_placement(grid, echo)
        lock, tracker, sweep, manifest = _create_sweep(grid, name, uri, root, sweep_dir, gpus)
        echo(f"sweep {name}: {len(grid.trials)} trials → {sweep_dir}")
        echo(f"MLflow: {uri} (experiment {grid.experiment!r}, parent run {sweep['parent_run_id']})")
        t0 = time.monotonic()
        _warmups(grid.warmups, root, manifest, tracker, grid.spec.resources.cpus_per_trial, echo)
        results = _tune(grid, sweep, gpus, sweep_dir)
        return _conclude(sweep_dir, manifest, tracker, results, time.monotonic() - t0, echo)
    finally:
        if lock is not None:
            lock.release()
        if started:
            import ray

            ray.shutdown()


def _new_sweep_dir(root: Path, name: str) -> Path:
    """Where the sweep `name` will live: a valid name, and no sweep there yet (an existing
    one is resumed, never overwritten; the message says whether a driver holds it)."""
    problem = name_problem(name)
    if problem:
        raise SweeperError(f"--name: {problem}")
    sweep_dir = root / name
    if sweep_dir.exists():
        from sweeper.lock import read_holder

        try:
            holder = read_holder(sweep_dir)
        except SweeperError:  # a damaged driver.json: the sweep exists all the same
            holder = None
        live = f" and is being driven by {holder.describe()}" if holder and not holder.stale() else ""
        raise SweeperError(
            f"sweep {name!r} already exists at {sweep_dir}{live}; `fl-sweep resume {name}` "
            "continues it, `--name NEW` starts another"
        )
    return sweep_dir


def _check_warmup_cache(grid: Grid, root: Path) -> None:
    """A damaged warm-up cache stops the run before Ray starts or the sweep directory
    exists (the warm-ups themselves are computed once the sweep is set up)."""
    from sweeper import warmup

    for key, wcfg in grid.warmups.items():
        warmup.cache_state(warmup.warmup_dir(root, key), wcfg.fl.rounds)


def _tracking_uri(sweep_dir: Path, tracking_uri: str | None, echo: Echo) -> str:
    """The MLflow URI the sweep records: the sweep's own sqlite store by default. Credentials
    in a given URI never reach sweep.json, Tune's state or the log: they move into MLflow's
    variables (inherited by a local cluster's processes), and the user is told which."""
    from sweeper.tracking import default_uri, normalize_uri, take_credentials

    if not tracking_uri:
        return default_uri(sweep_dir)
    uri, moved = take_credentials(normalize_uri(tracking_uri))
    if moved:
        echo(f"note: credentials taken out of the tracking URI into {', '.join(moved)} "
             "(set these on every node of a remote cluster, and for resume/status/ui)")
    return uri


def _check_placement(grid: Grid, echo: Echo) -> bool:
    """Every trial's placement group fits the connected cluster (Ray would otherwise wait
    forever without an error). Returns whether the cluster has a GPU: without one the GPU
    requests are dropped, with a note, and the trials run on CPU."""
    gpus = cluster_gpus() > 0
    if grid.spec.resources.gpus_per_trial and not gpus:
        echo("note: resources.gpus_per_trial is set but the cluster has no GPU; trials run on CPU")
    check_fits([(f"trial {t.index} [{t.short_key}]", bundles(t.config, grid.spec.resources, gpus))
                for t in grid.trials])
    return gpus


def _create_sweep(grid: Grid, name: str, uri: str, root: Path, sweep_dir: Path, gpus: bool):
    """The sweep on disk and in MLflow, all or nothing: its directory (atomic: of two runs
    of one name exactly one gets it) and lock, the experiment, the runs and the manifest.
    If any of it fails the directory is removed again, so nothing is left half-written.

    Returns:
        (lock, tracker, sweep, manifest): `sweep` is what every trial is given (where to
        log, its resources), `manifest` what was written as sweep.json.
    """
    from sweeper.lock import SweepLock

    st.create_sweep_dir(sweep_dir)
    lock = SweepLock(sweep_dir, "run").acquire()
    try:
        tracker, exp_id, parent = _open_experiment(grid, name, uri, root, sweep_dir)
        _create_runs(tracker, exp_id, parent, name, grid, sweep_dir)
        sweep = {
            "name": name,
            "tracking_uri": uri,
            "experiment_id": exp_id,
            "parent_run_id": parent,
            "resources": grid.spec.resources.model_dump(mode="json"),
            "launch_cwd": os.getcwd(),
            "storage_root": str(root),
        }
        manifest = _write_manifest(grid, sweep, gpus, sweep_dir)
    except BaseException:
        lock.release()  # first: its heartbeat would re-create the directory
        shutil.rmtree(sweep_dir, ignore_errors=True)
        raise
    return lock, tracker, sweep, manifest


def _open_experiment(grid: Grid, name: str, uri: str, root: Path, sweep_dir: Path):
    """The MLflow store, the experiment and the sweep's parent run, described for the
    dashboard's landing page. Returns (tracker, experiment id, parent run id)."""
    from sweeper import landing
    from sweeper.tracking import GRID_FILE, SWEEP_DIR, TRIALS, Tracker, sqlite_path

    tracker = Tracker(uri)
    tracker.init_store(template_dir=root)
    art = (sweep_dir / "artifacts").as_uri() if sqlite_path(uri) else None
    exp_id = tracker.experiment(grid.experiment, art)
    parent = tracker.start_parent(
        exp_id, name, grid.spec.description,
        tags={GRID_FILE: grid.path, TRIALS: str(len(grid.trials)), SWEEP_DIR: str(sweep_dir)},
    )
    landing.describe_experiment(tracker, exp_id, name, grid.spec.description)
    return tracker, exp_id, parent


def _create_runs(tracker, exp_id: str, parent: str, name: str, grid: Grid, sweep_dir: Path) -> None:
    """One child run per trial, created now so the dashboard lists the whole sweep from
    the start; the grid file and trials.csv stored in the sweep and on the parent run."""
    from sweeper import landing

    landing.create_children(tracker, exp_id, parent, name, grid.trials, grid.varied_keys)
    st.atomic_write_text(sweep_dir / "grid.yaml", grid.text)
    st.atomic_write_text(sweep_dir / "trials.csv", st.csv_text(trial_rows(grid)))
    tracker.log_artifact(parent, sweep_dir / "grid.yaml")
    tracker.log_artifact(parent, sweep_dir / "trials.csv")


def _write_manifest(grid: Grid, sweep: dict[str, Any], gpus: bool, sweep_dir: Path) -> dict[str, Any]:
    """sweep.json: what `resume`, `status` and the report need without the grid file (the
    trials' keys and bundles, the warm-ups' configs). Written last: a sweep directory with
    a manifest is a complete one."""
    manifest = {
        **sweep,
        "experiment": grid.experiment,
        "grid_file": str(Path(grid.path).resolve()),
        "description": grid.spec.description,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "num_trials": len(grid.trials),
        "varied_keys": list(grid.varied_keys),
        "max_concurrent_trials": grid.spec.max_concurrent_trials,
        "warmups": {k: c.model_dump(mode="json") for k, c in grid.warmups.items()},
        "trials": [{"index": t.index, "trial_key": t.trial_key, "rounds": t.config.fl.rounds,
                    "overrides": t.overrides,
                    "bundles": bundles(t.config, grid.spec.resources, gpus)}
                   for t in grid.trials],
    }
    st.write_json(sweep_dir / st.MANIFEST, manifest)
    return manifest


def _tune(grid: Grid, sweep: dict[str, Any], gpus: bool, sweep_dir: Path):
    """Run every trial under a new `Tuner` and return its results. The callbacks are
    stopped however the fit ends: the progress display closes its live view and names
    the failed trials' error files even after Ctrl-C."""
    from ray import tune

    tune_config, run_config = _tune_configs(sweep_dir, grid.spec.max_concurrent_trials,
                                            len(grid.trials))
    tuner = tune.Tuner(_trainable(), param_space=param_space(grid, sweep, gpus),
                       tune_config=tune_config, run_config=run_config)
    try:
        return tuner.fit()
    finally:
        for cb in run_config.callbacks or ():
            getattr(cb, "stop", lambda: None)()


def resume_sweep(ref: str, *, storage: str | None = None, ray_opts: RayOptions | None = None,
                 echo: Echo = _echo) -> SweepOutcome:
    """Continue a sweep: same parent run; unfinished and errored trials go on from their
    last checkpoint; finished ones are not re-run. Holds the sweep's lock throughout: a
    second driver is refused before it starts Ray."""
    from sweeper.lock import SweepLock

    sweep_dir = st.resolve_sweep(ref, storage)
    manifest = st.read_manifest(sweep_dir)
    with SweepLock(sweep_dir, "resume") as lock:
        if lock.taken_over is not None:
            echo(f"note: the previous driver ({lock.taken_over.describe()}) is gone; taking over")
        from ray import tune

        tune_dir = sweep_dir / st.TUNE_NAME
        if not tune.Tuner.can_restore(str(tune_dir)):
            raise SweeperError(
                f"{sweep_dir}: Ray Tune saved no experiment state (the driver stopped before its "
                f"first snapshot); start it again with `fl-sweep run {manifest.get('grid_file')} "
                "--name NEW`"
            )
        _quiet_tune()
        started = connect(ray_opts or RayOptions())
        try:
            check_fits([(f"trial {t['index']} [{t['trial_key'][:8]}]", t["bundles"])
                        for t in manifest["trials"]])
            from sweeper.tracking import Tracker

            tracker = Tracker(manifest["tracking_uri"])
            tracker.reopen(manifest["parent_run_id"])
            echo(f"resuming sweep {manifest['name']} ({manifest['num_trials']} trials) from {sweep_dir}")
            t0 = time.monotonic()
            warm = {k: parse_config(c) for k, c in (manifest.get("warmups") or {}).items()}
            _warmups(warm, Path(manifest.get("storage_root") or sweep_dir.parent), manifest, tracker,
                     float((manifest.get("resources") or {}).get("cpus_per_trial", 1.0)), echo)
            tuner = tune.Tuner.restore(str(tune_dir), trainable=_trainable(), resume_errored=True)
            results = tuner.fit()
            return _conclude(sweep_dir, manifest, tracker, results, time.monotonic() - t0, echo)
        finally:
            if started:
                import ray

                ray.shutdown()


def _warmups(warmups: dict, root: Path, manifest: dict[str, Any], tracker, cpus: float, echo: Echo) -> None:
    """Compute (or reuse) the grid's shared warm-ups before any trial starts, and log each
    as its own child run of the sweep."""
    if not warmups:
        return
    from sweeper import warmup

    got = warmup.ensure(warmups, root, launch_cwd=manifest.get("launch_cwd"), cpus=cpus, echo=echo)
    for key, cfg in warmups.items():
        warmup.log_to_mlflow(tracker, manifest["experiment_id"], manifest["parent_run_id"],
                             manifest["name"], key, cfg, root)
        echo(f"warm-up {key} (seed {cfg.seed}, {cfg.fl.rounds} rounds): {got[key]}")


def _conclude(sweep_dir: Path, manifest: dict[str, Any], tracker, results,
              seconds: float, echo: Echo = _echo) -> SweepOutcome:
    """Count the trials' ends, summarise the sweep on its parent run (the dashboard's landing
    page and the report) and close it; the end-of-run text is the CLI's job."""
    counts = {"finished": 0, "diverged": 0, "failed": 0, "interrupted": 0}
    failures: list[tuple[str, str]] = []
    for r in results:
        if r.error is not None:
            counts["failed"] += 1
            failures.append((_trial_label(r), error_line(r.error, r.metrics)))
        else:
            s = (r.metrics or {}).get("fl_status")
            counts[s if s in ("finished", "diverged") else "interrupted"] += 1
    parent = manifest["parent_run_id"]
    from sweeper import landing

    try:
        landing.summarise(tracker, manifest, sweep_dir, echo)
    except Exception as e:  # noqa: BLE001 - the trials' results are stored already
        echo(f"note: the parent run's summary was not logged ({type(e).__name__}: {e})")
    if counts["failed"]:
        tracker.finish(parent, "failed")
    elif not counts["interrupted"]:
        tracker.finish(parent, "finished")
    return SweepOutcome(sweep_dir, counts, seconds, manifest["name"], sorted(failures))


def _trial_label(result) -> str:
    t = ((result.config or {}).get("trial") or {})
    name = t.get("name") or str(t.get("trial_key", "?"))[:8]
    return f"trial {t.get('index', '?')} [{name}]"


MAX_ERROR_LINE = 1000


def error_line(error: BaseException, metrics: dict[str, Any] | None = None) -> str:
    """The one line that says why a trial failed: the original exception's message, not the
    Ray traceback around it. Tune hands over a RayTaskError whose `cause` is what the
    trainable raised (intact: fl_core's and the sweeper's errors pickle whole); the project's
    own errors are printed as they are, anything else as `Type: first line`."""
    from fl_core.errors import FLCoreError

    cause = getattr(error, "cause", None)
    e = cause if isinstance(cause, BaseException) else error
    if isinstance(e, (FLCoreError, SweeperError)):
        text = str(e)
    elif (metrics or {}).get("error"):  # what the trainable reported before raising
        text = str(metrics["error"])
    else:
        text = f"{type(e).__name__}: {e}"
    lines = [x for x in text.splitlines() if x.strip()] or [type(e).__name__]
    line = lines[0]
    return line if len(line) <= MAX_ERROR_LINE else line[: MAX_ERROR_LINE - 3] + "..."
