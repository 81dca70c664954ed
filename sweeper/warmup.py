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
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
from pathlib import Path
from typing import Any, Callable, Iterator

from pydantic import BaseModel, ConfigDict, Field

from fl_core.config import EXECUTION_ONLY_KEYS, SimulationConfig, config_hash, parse_config, set_dotted

WARMUP_DIR = "warmups"
#: keys that never change a warm-up's weights, left out of its cache key (fl.rounds is IN it)
_NOT_IN_KEY = EXECUTION_ONLY_KEYS


class WarmupSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

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


def is_finished(d: Path, rounds: int) -> bool:
    """A warm-up directory whose run reached `rounds` and ended (its state.pt is final)."""
    try:
        status = json.loads((d / "status.json").read_text())
    except (OSError, ValueError):
        return False
    return status.get("status") == "finished" and status.get("round") == rounds and (d / "state.pt").is_file()


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
    import ray

    from sweeper.errors import SweeperError

    todo = {k: c for k, c in warmups.items() if not is_finished(warmup_dir(storage_root, k), c.fl.rounds)}
    got = {k: "reused" for k in warmups if k not in todo}
    if todo:
        echo(f"warm-up: {len(todo)} to compute ({', '.join(todo)}), {len(got)} reused")
        task = ray.remote(num_cpus=cpus)(compute)
        refs = {k: task.remote(c.model_dump(mode="json"), str(warmup_dir(storage_root, k)), launch_cwd)
                for k, c in todo.items()}
        for k, ref in refs.items():
            got[k] = ray.get(ref)
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
                                      tags={ROLE: "warmup"})
    for m in read_jsonl(warmup_dir(storage_root, key) / METRICS):
        tracker.log_metrics(run, {k: v for k, v in m.items() if k != "round"}, step=int(m["round"]))
    tracker.finish(run, "finished")
    return run
