"""Shared warm-ups: train the clean model once per seed, start every trial of that seed from it.

The paper's derivation assumes a model that "has sufficiently converged", and backdoor
studies attack pretrained checkpoints; a shared warm-up also makes a reproduction far
cheaper (the clean rounds are trained once, not once per cell). A grid's `warmup:` section::

    warmup:
      rounds: 20                        # clean FedAvg rounds
      overrides: {fl.local_epochs: 2}   # optional dotted keys on top of `base`

The warm-up config of seed s is `base` + `overrides` with no attack, no defense (n_k-weighted
FedAvg), `fl.rounds` = warmup rounds and `seed` = s. It is computed once and cached by its
config hash under the storage root (`<root>/warmups/<key>/`, a `fl-sweep simulate --out`
directory), so every sweep in the same storage root that asks for the same warm-up reuses
it; an interrupted one resumes from its checkpoint. Each trial of seed s gets
`fl.init: warmups/<key>` (relative to the storage root, so the trial key does not depend on
where the storage lives; the trainable passes the root as `initial_state(init_root=...)`) and continues from the warm-up's round: `attack.start_round` keeps
counting from round 0 of the warm-up. Everything random derives from (seed, round, client),
so a trial is bit-identical whether its warm-up was computed in this sweep or reused.

A cache is read back as untrusted (`cache_state`): its status.json through the guarded
reader, its state.pt through `fl_core.state.load_state`, in the driver before any warm-up
task or trial starts. The sweeper writes both atomically, so one that is damaged (cut in
half, edited) was damaged by something else: the sweep stops with one line naming the
file (exit 2) instead of six trials failing with unpickling tracebacks, and nothing is
deleted or recomputed over it; moving the directory away makes the next run compute it
again. A cache that is merely incomplete (an interrupted warm-up) resumes as before.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import functools
from pathlib import Path
from typing import Any, Callable, Iterator

from pydantic import BaseModel, ConfigDict, Field

from fl_core.config import EXECUTION_ONLY_KEYS, SimulationConfig, config_hash, parse_config, set_dotted

WARMUP_DIR = "warmups"
STATUS_MAX_BYTES = 64 << 10
STATUS_SHAPE = ("the status.json a warm-up writes: a JSON object with status (running, "
                "finished or diverged), round and rounds (integers >= 0)")
#: keys that never change a warm-up's weights, left out of its cache key (fl.rounds is IN it)
_NOT_IN_KEY = EXECUTION_ONLY_KEYS


class WarmupSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    rounds: int = Field(ge=1, le=1_000_000, description="clean FedAvg rounds of the shared warm-up")
    overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="dotted config keys applied on top of `base` for the warm-up only "
        "(e.g. fl.local_epochs); attack and defense keys are not allowed",
    )


def warmup_raw(base: dict[str, Any], spec: WarmupSpec, seed: int) -> dict[str, Any]:
    """The warm-up's raw config for `seed`: base + overrides, clean, `spec.rounds` rounds.

    The backdoor task's keys (num_tasks, max_tasks, labels) are kept so that the warm-up
    measures the same backdoor accuracy as the trials that continue from it."""
    raw = copy.deepcopy(base)
    for k, v in spec.overrides.items():
        set_dotted(raw, k, v)
    attack = raw.get("attack") or {}
    keep = {k: attack[k] for k in ("num_tasks", "max_tasks", "source_label", "target_label") if k in attack}
    raw["attack"] = {"kind": "none", **keep}
    raw["defense"] = {}
    set_dotted(raw, "fl.rounds", spec.rounds)
    set_dotted(raw, "fl.init", "random")
    raw["seed"] = seed
    return raw


def warmup_key(cfg: SimulationConfig) -> str:
    """The cache key: the warm-up config's hash (rounds included), 16 hex digits."""
    return config_hash(cfg, _NOT_IN_KEY)[:16]


def init_ref(key: str) -> str:
    """The `fl.init` value of a trial that starts from warm-up `key` (storage-relative)."""
    return f"{WARMUP_DIR}/{key}"


def is_warmup_ref(init: str) -> bool:
    return init.startswith(WARMUP_DIR + "/") and "/" not in init[len(WARMUP_DIR) + 1:]


def warmup_dir(storage_root: Path, key: str) -> Path:
    return Path(storage_root) / WARMUP_DIR / key


@functools.cache
def _status_schema() -> type:
    """A warm-up's status.json (sweeper.local writes it), built on first use."""
    from typing import Literal

    from pydantic import BaseModel, ConfigDict, Field

    class WarmupStatus(BaseModel):
        model_config = ConfigDict(strict=True, extra="allow")

        status: Literal["running", "finished", "diverged"]
        round: int = Field(ge=0, le=10**9)
        rounds: int = Field(None, ge=0, le=10**9)
        message: str = Field(None, max_length=1 << 16)

    return WarmupStatus


def cache_state(d: Path, rounds: int) -> str:
    """What warm-up directory `d` holds for a warm-up of `rounds` rounds: `missing`,
    `incomplete` (interrupted or diverged: compute resumes it from its state.pt, if any) or
    `finished` (status.json says so and state.pt is a readable checkpoint of that round).

    Raises:
        SweepFileError: its status.json or state.pt is damaged (see the module docstring).
    """
    from sweeper.rundir import STATE, STATUS
    from sweeper.storage import SweepFileError, read_json

    d = Path(d)
    remedy = (f"the sweeper writes its caches atomically, so something else changed this; move "
              f"{d} away (the warm-up is then computed again) or restore it from a copy")
    if not d.is_dir():
        if d.exists() or d.is_symlink():
            raise SweepFileError(str(d), "is not a directory (a warm-up cache is one)", remedy)
        return "missing"
    try:
        status = read_json(d / STATUS, _status_schema(), max_bytes=STATUS_MAX_BYTES,
                           expected=STATUS_SHAPE, what="a status.json")
    except FileNotFoundError:
        status = None
    except SweepFileError as e:
        raise SweepFileError(e.file, e.problem, remedy) from None
    state = d / STATE
    if not state.is_file():
        if state.exists() or state.is_symlink():
            raise SweepFileError(str(state), "is not a file", remedy)
        return "incomplete"
    held = _checkpoint_round(state, remedy)
    if status is not None and status.status == "finished" and status.round == rounds:
        if held != rounds:
            raise SweepFileError(str(state), f"holds round {held}, but status.json says the "
                                 f"warm-up finished round {rounds}", remedy)
        return "finished"
    return "incomplete"


def _checkpoint_round(path: Path, remedy: str) -> int:
    """The round a warm-up checkpoint holds, read with fl_core's own checks (a truncated or
    foreign file is an error here, in the driver, not in every trial)."""
    from fl_core.errors import FLCoreError
    from fl_core.state import load_state
    from sweeper.storage import SweepFileError

    try:
        return load_state(path).round_idx
    except FLCoreError as e:
        problem = getattr(e, "problem", None) or str(e)
        raise SweepFileError(str(path), f"not a usable checkpoint ({problem})", remedy) from None


def is_finished(d: Path, rounds: int) -> bool:
    """A warm-up directory whose run reached `rounds` and ended (its state.pt is final);
    SweepFileError when the cache is damaged."""
    return cache_state(d, rounds) == "finished"


@contextlib.contextmanager
def _locked(d: Path) -> Iterator[None]:
    """One writer per warm-up directory, across sweeps and hosts sharing the storage."""
    d.mkdir(parents=True, exist_ok=True)
    with open(d / ".lock", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def compute(cfg_json: dict[str, Any], out_dir: str, launch_cwd: str | None = None) -> str:
    """Compute (or resume, or reuse) one warm-up in `out_dir`; returns `reused`,
    `finished` or `diverged`. Runs anywhere the storage is visible (a Ray task)."""
    from sweeper.local import STATE, run_local
    from sweeper.trainable import _resolve_data

    cfg = parse_config(cfg_json)
    cfg = cfg.model_copy(update={"data": _resolve_data(cfg, launch_cwd)})
    d = Path(out_dir)
    with _locked(d):
        if is_finished(d, cfg.fl.rounds):
            return "reused"
        # the directory holds our lock file: a fresh start overwrites it knowingly
        return run_local(cfg, d, resume=(d / STATE).is_file(), force=True)


def ensure(
    warmups: dict[str, SimulationConfig],
    storage_root: Path,
    *,
    launch_cwd: str | None,
    cpus: float = 1.0,
    echo: Callable[[str], None] = print,
) -> dict[str, str]:
    """Make every warm-up of `warmups` (key → config) exist under `storage_root`, in
    parallel as Ray tasks (Ray must be connected). Returns key → how it was obtained.

    Raises:
        SweeperError: a warm-up diverged (its trials cannot start).
    """
    from sweeper.errors import SweeperError

    # every cache is checked here, in the driver, before any task or trial starts
    todo = {k: c for k, c in warmups.items() if not is_finished(warmup_dir(storage_root, k), c.fl.rounds)}
    got = {k: "reused" for k in warmups if k not in todo}
    if todo:
        import ray

        echo(f"warm-up: {len(todo)} to compute ({', '.join(todo)}), {len(got)} reused")
        task = ray.remote(num_cpus=cpus)(compute)
        refs = {k: task.remote(c.model_dump(mode="json"), str(warmup_dir(storage_root, k)), launch_cwd)
                for k, c in todo.items()}
        for k, ref in refs.items():
            got[k] = _get(ray, ref)
    elif warmups:
        echo(f"warm-up: all {len(warmups)} reused from {Path(storage_root) / WARMUP_DIR}")
    bad = {k: s for k, s in got.items() if s not in ("reused", "finished")}
    if bad:
        raise SweeperError(
            f"warm-up {', '.join(f'{k} {s}' for k, s in bad.items())} (see "
            f"{Path(storage_root) / WARMUP_DIR}/<key>/status.json); lower fl.client_lr or change "
            "the warmup section"
        )
    return got


def _get(ray, ref) -> str:
    """ray.get, with the task's own error re-raised when it is one of ours (a damaged cache
    found by the task, bad data): its one line, not Ray's wrapped traceback."""
    from fl_core.errors import FLCoreError
    from sweeper.errors import SweeperError

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, (FLCoreError, SweeperError)):
            raise e.cause from None
        raise


def log_to_mlflow(tracker, experiment_id: str, parent_run: str, sweep: str, key: str,
                  cfg: SimulationConfig, storage_root: Path) -> str:
    """Log a warm-up as its own child run of the sweep (idempotent: the run is found by its
    key, metrics are re-logged at the same steps)."""
    from fl_core.config import flatten
    from sweeper.jsonl import read_jsonl
    from sweeper.tracking import ROLE
    from sweeper.local import METRICS

    run = tracker.get_or_create_child(experiment_id, parent_run, sweep, f"warmup-{key}",
                                      f"warm-up seed={cfg.seed} ({cfg.fl.rounds} rounds)", flatten(cfg),
                                      tags={ROLE: "warmup"}, config=cfg)
    for m in read_jsonl(warmup_dir(storage_root, key) / METRICS):
        tracker.log_metrics(run, {k: v for k, v in m.items() if k != "round"}, step=int(m["round"]))
    tracker.finish(run, "finished")
    return run
