"""Read a sweep's runs into pandas: from MLflow (DESIGN.md's layout) or from plain
`fl-sweep simulate` output directories (`config.yaml` + `metrics.jsonl`).

Every source ends up as the same two frames (`SweepData`):
- `runs`: one row per run (index `run_id`) with `sweep`, `source`, `status`, `seed`,
  `cell` (the grid cell's label), `cell_index` (its position in the paper-style order)
  and one column per dotted config key (`attack.fraction`, `defense.norm_bound`, ...),
  typed as in `fl_core.config`: an MLflow run's config is read from its logged
  config.yaml artifact and validated with `parse_config`, like a directory's (a run of an
  older store without one: its params, parsed back from strings).
- `metrics`: one row per (run, evaluated round): `run_id`, `round` (rounds completed,
  1..R; MLflow `step`) and the metric keys of DESIGN.md.

A grid cell is a distinct value of the config keys that vary across the loaded runs,
ignoring the seed and the keys that change no result (workers, checkpointing, backend,
device). Several sweeps may be loaded together (e.g. `fig4a` plus `fig4_baseline`); a run
that appears twice (same config, same seed: e.g. the M = 10 cell shared by fig 2/6, 3 and
4a) is kept once, the one with the most rounds.
"""

from __future__ import annotations

import ast
import functools
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from fl_core.config import EXECUTION_ONLY_KEYS, config_hash, flatten, parse_config, parse_flat, read_back
from fl_core.errors import ConfigError
from sweeper.errors import SweeperError
from sweeper.rundir import CONFIG, METRICS, STATUS
from sweeper.warmup import is_warmup_ref

METRIC_KEYS = (
    "main_acc",
    "main_loss",
    "backdoor_acc",
    "backdoor_acc_heldout",
    "num_attackers",
    "benign_norm_p50",
    "benign_norm_p90",
    "benign_norm_max",
    "attacker_norm_pre",
    "attacker_norm_post",
    "aggregate_norm",
    "round_seconds",
)
# Keys that never define a grid cell: the seed is the replicate axis, the execution-only keys
# change no result, and backend and device give the same numbers to float tolerance
# (fl_core.config.EXECUTION_ONLY_KEYS says why precision and threads are not pooled).
NON_CELL_KEYS = frozenset({"seed", *EXECUTION_ONLY_KEYS, "fl.backend", "fl.device"})
# Paper-style order of the keys in a cell label (rows before columns), then alphabetical.
KEY_ORDER = (
    "attack.kind",
    "attack.fraction",
    "attack.schedule",
    "attack.frequency",
    "attack.num_tasks",
    "defense.aggregator",
    "defense.norm_bound",
    "defense.noise_sigma",
    "defense.noise_placement",
)
SHORT = {
    "attack.fraction": "ε",
    "attack.frequency": "f",
    "attack.num_tasks": "N",
    "attack.start_round": "start",
    "defense.norm_bound": "M",
    "defense.noise_sigma": "σ",
    "defense.noise_placement": "noise on",
    "fl.rounds": "R",
    "fl.clients_per_round": "C·K",
}
AGGREGATOR = "defense.aggregator"
AGGREGATOR_PARAMS = "defense.aggregator_params."
ATTACK_PARAMS = "attack.params."


class ReportError(SweeperError):
    """The report cannot find or read what it was pointed at."""


@dataclass(frozen=True)
class ParentRun:
    """The MLflow parent run of one sweep (where the report logs its artifacts)."""

    sweep: str
    tracking_uri: str
    run_id: str
    experiment_id: str


@dataclass(frozen=True)
class SweepData:
    """Runs and per-round metrics of one or more sweeps (see the module docstring)."""

    name: str
    runs: pd.DataFrame
    metrics: pd.DataFrame
    cell_keys: tuple[str, ...]
    parents: tuple[ParentRun, ...] = ()
    notes: tuple[str, ...] = field(default=())

    def cells(self) -> list[str]:
        """Cell labels in paper-style order."""
        order = self.runs.drop_duplicates("cell").sort_values("cell_index")
        return list(order["cell"])

    def cell_runs(self, cell: str) -> pd.DataFrame:
        return self.runs[self.runs["cell"] == cell]

    def cell_config(self, cell: str) -> dict[str, Any]:
        """Dotted config of the cell's first run, without the seed."""
        row = self.cell_runs(cell).iloc[0]
        return {k: na_to_none(row[k]) for k in self.config_keys() if k != "seed"}

    def config_keys(self) -> list[str]:
        return [c for c in self.runs.columns if c == "seed" or "." in c]


# --------------------------------------------------------------------------- parsing
#: MLflow caps a param value at 6000 characters; a longer "list" is not one the sweeper logged
_MAX_LIST_PARAM = 6000


def parse_param(text: str) -> Any:
    """An MLflow param string back to a Python value (MLflow logs `str(value)`)."""
    if text in ("None", "null", ""):
        return None
    if text in ("True", "true"):
        return True
    if text in ("False", "false"):
        return False
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        pass
    if text.startswith("[") and text.endswith("]") and len(text) <= _MAX_LIST_PARAM:
        # a list-valued key (e.g. defense.crfl_certify_radii), logged as str(list): Python's
        # literal syntax, which literal_eval reads without evaluating code
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return text
        return value if isinstance(value, list) else text
    return text


def _typed_config(flat: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Validate a dotted config through fl_core; unknown/old keys are kept as given."""
    try:
        return flatten(parse_flat(flat, source=source))
    except ConfigError:
        # A run written by another version of the engine: report it with its own keys.
        return dict(flat)


def na_to_none(v: Any) -> Any:
    """A config value from a DataFrame cell: pandas turns None into NaN; turn it back."""
    if v is None:
        return None
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


# --------------------------------------------------------------------------- simulate dirs
def find_simulate_dirs(root: Path, max_depth: int = 4) -> list[Path]:
    """Directories under `root` (itself included) holding config.yaml + metrics.jsonl."""
    found: list[Path] = []
    root = root.resolve()
    for dirpath, dirnames, filenames in os.walk(root):
        depth = len(Path(dirpath).relative_to(root).parts)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and depth < max_depth)
        if CONFIG in filenames and METRICS in filenames:
            found.append(Path(dirpath))
    return sorted(found)


def read_metrics_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a metrics.jsonl (`sweeper.jsonl.read_jsonl`): a truncated last line (run
    killed mid-write) is dropped with a warning; a bad line before it is a ReportError."""
    from sweeper.jsonl import JsonlError, read_jsonl

    try:
        return read_jsonl(path)
    except JsonlError as e:
        raise ReportError(str(e)) from None


STATUS_MAX_BYTES = 64 << 10
STATUS_SHAPE = ("the status.json `fl-sweep simulate` or `fl-sweep export` writes: a JSON object "
                "whose `status` is a lower-case word (finished, diverged, ...)")


@functools.cache
def _status_schema() -> type:
    """A run directory's status.json (sweeper.local, sweeper.report.export); only `status`
    is read, the rest is kept as written."""
    from pydantic import BaseModel, ConfigDict, Field

    class RunStatus(BaseModel):
        model_config = ConfigDict(strict=True, extra="allow")
        status: str | None = Field(None, pattern=r"^[a-z][a-z_-]{0,31}$")

    return RunStatus


def _run_status(path: Path) -> str | None:
    """The `status` of a run directory's status.json (None: no file, or none recorded);
    a damaged or foreign one is a ReportError naming it (sweeper.storage.read_json)."""
    from sweeper.storage import SweepFileError, read_json

    try:
        return read_json(path, _status_schema(), max_bytes=STATUS_MAX_BYTES, expected=STATUS_SHAPE,
                         what="a status.json").status
    except FileNotFoundError:
        return None
    except SweepFileError as e:
        raise ReportError(str(e)) from None


def _read_config(path: Path) -> dict[str, Any]:
    """A run's config.yaml, read by the sweeper's one bounded YAML reader (sweeper.yamlio:
    alias bombs, depth, size, non-UTF-8 and tags refused with the file named)."""
    from sweeper import yamlio

    raw, _ = yamlio.read_yaml(path)
    return _config_mapping(raw, str(path))


def _config_mapping(raw: Any, where: str) -> dict[str, Any]:
    """A config read back as YAML must be a mapping (an empty file: {})."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ReportError(f"{where}: holds {type(raw).__name__}, not a mapping of config keys "
                          "(seed, data, fl, attack, defense)")
    return raw


def _load_simulate_dir(d: Path, sweep: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    raw = _read_config(d / CONFIG)
    try:
        cfg = read_back(raw, source=str(d / CONFIG))
        flat = flatten(cfg)
        trial_key = config_hash(cfg)
    except ConfigError:
        flat = _flat_dict(raw)
        trial_key = json.dumps(flat, sort_keys=True, default=str)
    rows = read_metrics_jsonl(d / METRICS)
    last = max((r["round"] for r in rows), default=0)
    rounds = flat.get("fl.rounds")
    known = isinstance(rounds, int) and not isinstance(rounds, bool)  # another version's may not be
    status = "finished" if known and last >= rounds else "incomplete"
    # written by `fl-sweep simulate` (sweeper/local.py) and `fl-sweep export`
    status = _run_status(d / STATUS) or status
    run = {"run_id": f"dir:{d}", "sweep": sweep, "source": str(d), "status": status,
           "trial_key": trial_key, **flat}
    return run, [{"run_id": run["run_id"], **r} for r in rows]


def _flat_dict(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flat_dict(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def load_simulate_dirs(root: Path, sweep: str | None = None) -> tuple[list[dict], list[dict]]:
    dirs = find_simulate_dirs(root)
    if not dirs:
        raise ReportError(
            f"{root}: no run found (expected config.yaml + metrics.jsonl from `fl-sweep "
            "simulate --out DIR`, in it or in its sub-directories, or an MLflow store)"
        )
    name = sweep or root.resolve().name
    runs, metrics = [], []
    for d in dirs:
        run, rows = _load_simulate_dir(d, name)
        runs.append(run)
        metrics.extend(rows)
    return runs, metrics


# --------------------------------------------------------------------------- MLflow
def find_store(path: Path) -> str | None:
    """The MLflow tracking URI of a sweep storage directory, or None if it holds none.

    The sweeper keeps its sqlite store under the sweep's storage directory; any `*.db`
    there (or in a direct sub-directory) that has MLflow's `runs` table counts.
    """
    import sqlite3

    candidates = sorted(path.glob("*.db")) + sorted(path.glob("*/*.db"))
    for db in candidates:
        try:
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
            try:
                ok = con.execute(
                    "SELECT name FROM sqlite_master WHERE type='table' AND name='runs'"
                ).fetchone()
            finally:
                con.close()
        except sqlite3.Error:
            continue
        if ok:
            return f"sqlite:///{db.resolve()}"
    return None


def _tracker(uri: str, read_only: bool = True):
    """The store's reader (sweeper.tracking, the one module that talks to MLflow): retried,
    paged, and (`read_only`, the report's and export's commands) bounded when a server does
    not answer. The sweep's driver reports with read_only=False: it still writes after."""
    from sweeper.tracking import Tracker

    return Tracker(uri, read_only=read_only)


def find_parent_runs(uri: str, sweep: str | None = None) -> list:
    """Parent runs (tag fl_sweep.role=parent) in the store, optionally of one sweep name,
    newest first."""
    return _tracker(uri).parent_runs(sweep)


def _run_config(tracker, run, uri: str) -> dict[str, Any]:
    """A child run's dotted config, typed as fl_core makes it.

    Read from the run's logged config.yaml artifact, by the same path an exported run's
    config.yaml takes (`sweeper.yamlio`'s bounded reader, then `parse_config`). A run
    without that artifact (a store written by an older sweeper, which logged it only when
    the trial ended; a trial still running or failed there) falls back to its params,
    re-typed from MLflow's strings (`parse_param`). A config.yaml this engine cannot parse
    (another version's) is reported with its own keys, like a simulate directory's.
    """
    from sweeper import yamlio
    from sweeper.tracking import CONFIG_ARTIFACT, redact_uri

    where = f"{redact_uri(uri)} run {run.info.run_id} artifact {CONFIG_ARTIFACT}"
    data = tracker.read_artifact(run.info.run_id, CONFIG_ARTIFACT, yamlio.MAX_BYTES)
    if data is None:
        params = {k: parse_param(v) for k, v in run.data.params.items()}
        return _typed_config(params, source=f"{uri} run {run.info.run_id}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ReportError(f"{where}: not UTF-8 text; not the config.yaml the sweeper logs") from None
    raw = _config_mapping(yamlio.parse(text, where), where)
    try:
        return flatten(read_back(raw, source=where))
    except ConfigError:
        return _flat_dict(raw)


def load_mlflow_sweep(uri: str, sweep: str | None = None, parent_run_id: str | None = None,
                      read_only: bool = True) -> tuple[list[dict], list[dict], ParentRun, list[str]]:
    """Child runs of one sweep's parent run in store `uri`: the given `parent_run_id`
    (from the sweep manifest), else the newest parent run tagged with `sweep` (any
    sweep if None, as long as the store holds only one). Each run's config is its logged
    config.yaml (`_run_config`; its params where it has none)."""
    from sweeper.tracking import ROLE, STATUS, SWEEP, TRIAL_KEY, sqlite_path

    notes: list[str] = []
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        # MLflow would silently create an empty store there
        raise ReportError(f"MLflow store {uri}: no such file")
    tracker = _tracker(uri, read_only)
    if parent_run_id is not None:
        parent = tracker.get_run(parent_run_id)
    else:
        parents = tracker.parent_runs(sweep)
        if not parents:
            what = f"sweep `{sweep}`" if sweep else "any sweep"
            raise ReportError(f"MLflow store {uri}: no parent run of {what} (tag {ROLE}=parent)")
        names = {p.data.tags.get(SWEEP) for p in parents}
        if sweep is None and len(names) > 1:
            raise ReportError(
                f"MLflow store {uri} holds several sweeps ({', '.join(sorted(map(str, names)))}); "
                "name the one to report"
            )
        parent = parents[0]
        if len(parents) > 1:
            notes.append(f"{sweep or parent.info.run_name}: {len(parents)} parent runs in the "
                         f"store; reporting the newest ({parent.info.run_id})")
    name = parent.data.tags.get(SWEEP, sweep or parent.info.run_name)
    children = tracker.child_runs(parent.info.experiment_id, parent.info.run_id)
    # a shared warm-up is logged as a child too (role `warmup`): it is where the trials
    # start, not a cell of the sweep
    children = [c for c in children if c.data.tags.get(ROLE) != "warmup"]
    runs, metrics = [], []
    for child in children:
        flat = _run_config(tracker, child, uri)
        tags = child.data.tags
        run = {
            "run_id": child.info.run_id,
            "sweep": name,
            "source": f"{uri}#{child.info.run_id}",
            "status": tags.get(STATUS, child.info.status.lower()),
            "trial_key": tags.get(TRIAL_KEY, child.info.run_id),
            **flat,
        }
        runs.append(run)
        by_step: dict[int, dict[str, Any]] = {}
        for key in child.data.metrics:
            for step, value in tracker.metric_history(child.info.run_id, key):
                by_step.setdefault(step, {})[key] = value
        for step in sorted(by_step):
            metrics.append({"run_id": run["run_id"], "round": step, **by_step[step]})
    ref = ParentRun(name, uri, parent.info.run_id, parent.info.experiment_id)
    return runs, metrics, ref, notes


# --------------------------------------------------------------------------- resolution
def _manifest(path: Path) -> dict[str, Any] | None:
    from sweeper import storage

    if not (path / storage.MANIFEST).is_file():
        return None
    return storage.read_manifest(path)


def _load_one(source: str, tracking_uri: str | None, storage_root: str | None = None,
              read_only: bool = True):
    """(runs, metrics, parent-or-None, notes) for one SWEEP argument."""
    from sweeper import storage

    path = Path(source).expanduser()
    if path.is_dir():
        man = _manifest(path)
        if man is not None:  # a sweep directory of `fl-sweep run`
            return load_mlflow_sweep(tracking_uri or man["tracking_uri"], man.get("name"),
                                     None if tracking_uri else man.get("parent_run_id"),
                                     read_only=read_only)
        uri = find_store(path)
        if uri is not None:
            return load_mlflow_sweep(uri, None, read_only=read_only)
        runs, metrics = load_simulate_dirs(path)
        return runs, metrics, None, []
    if tracking_uri:
        return load_mlflow_sweep(tracking_uri, source, read_only=read_only)
    try:
        sweep_dir = storage.resolve_sweep(source, storage_root)
    except SweeperError as e:
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if uri:
            return load_mlflow_sweep(uri, source, read_only=read_only)
        raise ReportError(
            f"`{source}` is neither a directory (sweep storage or `fl-sweep simulate` "
            f"output) nor a known sweep: {e}; or pass --tracking-uri URI"
        ) from None
    return _load_one(str(sweep_dir), None, read_only=read_only)


def load_one(source: str, tracking_uri: str | None, storage_root: str | None = None,
             read_only: bool = True):
    """`_load_one`, with a store that cannot be read (a server that does not answer) as one
    ReportError naming the SWEEP argument, for `report` and `export` alike."""
    from sweeper.tracking import store_error

    try:
        return _load_one(source, tracking_uri, storage_root, read_only)
    except Exception as e:
        if (msg := store_error(e)) is None:
            raise
        raise ReportError(f"`{source}`: cannot read its MLflow store: {msg}") from None


def load_sweeps(sources: Sequence[str], tracking_uri: str | None = None,
                storage_root: str | None = None,
                read_only: bool = True) -> SweepData:
    """Load and merge the runs of every SWEEP argument (names or paths).

    Args:
        sources: sweep directories of `fl-sweep run` (their manifest names the MLflow
            store and parent run), sweep names (under `storage_root`, else looked up by
            tag in `tracking_uri` or $MLFLOW_TRACKING_URI), directories holding an MLflow
            sqlite store, or directories of `fl-sweep simulate` outputs.
        tracking_uri: MLflow store to read instead of the one a manifest names.
        storage_root: the sweeper's storage root (default $FL_SWEEP_STORAGE or ./sweeps).
        read_only: bound MLflow's HTTP retries for this process (`sweeper.tracking.Tracker`);
            False where the caller still writes to the store afterwards (the sweep's driver).

    Returns:
        SweepData with runs deduplicated by (config, seed) and cells assigned.

    Raises:
        ReportError: nothing found, or a run without any metric.
    """
    if not sources:
        raise ReportError("no sweep given")
    all_runs: list[dict] = []
    all_metrics: list[dict] = []
    parents: list[ParentRun] = []
    notes: list[str] = []
    names: list[str] = []
    for s in sources:
        runs, metrics, parent, n = load_one(s, tracking_uri, storage_root, read_only)
        all_runs.extend(runs)
        all_metrics.extend(metrics)
        notes.extend(n)
        if parent is not None:
            parents.append(parent)
        names.append(runs[0]["sweep"] if runs else Path(s).name)
    if not all_runs:
        raise ReportError(f"{', '.join(sources)}: the sweep has no runs yet")
    runs_df = pd.DataFrame(all_runs)
    metrics_df = pd.DataFrame(all_metrics) if all_metrics else pd.DataFrame(columns=["run_id", "round"])
    for k in METRIC_KEYS:
        if k not in metrics_df.columns:
            metrics_df[k] = float("nan")
    metrics_df["round"] = metrics_df["round"].astype(int)
    runs_df, dropped = _dedupe(runs_df, metrics_df)
    if dropped:
        notes.append(f"{dropped} duplicate run(s) (same config and seed in several sweeps) kept once")
    metrics_df = metrics_df[metrics_df["run_id"].isin(runs_df["run_id"])]
    metrics_df = metrics_df.sort_values(["run_id", "round"]).reset_index(drop=True)
    empty = sorted(set(runs_df["run_id"]) - set(metrics_df["run_id"]))
    if empty:
        notes.append(f"{len(empty)} run(s) without any evaluated round left out")
        runs_df = runs_df[~runs_df["run_id"].isin(empty)]
    if runs_df.empty:
        raise ReportError(f"{', '.join(sources)}: no run has an evaluated round yet")
    runs_df, keys = assign_cells(runs_df)
    return SweepData(
        name="+".join(dict.fromkeys(names)),
        runs=runs_df.set_index("run_id", drop=False),
        metrics=metrics_df,
        cell_keys=tuple(keys),
        parents=tuple(parents),
        notes=tuple(notes),
    )


def _dedupe(runs: pd.DataFrame, metrics: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    last = metrics.groupby("run_id")["round"].max() if not metrics.empty else pd.Series(dtype=int)
    runs = runs.assign(_last=runs["run_id"].map(last).fillna(0))
    runs = runs.sort_values("_last", ascending=False, kind="stable")
    kept = runs.drop_duplicates("trial_key", keep="first")
    return kept.drop(columns="_last").reset_index(drop=True), len(runs) - len(kept)


# --------------------------------------------------------------------------- cells
def _hashable(v: Any) -> Any:
    v = na_to_none(v)
    return json.dumps(v, sort_keys=True) if isinstance(v, (list, dict)) else v


def _sort_value(key: str, v: Any) -> tuple:
    v = na_to_none(v)
    if key == "attack.kind":
        spec = _attack_spec(v)
        return (0, spec.rank if spec else 99, str(v))
    if key == "attack.schedule":
        return (0, 0 if v == "fixed-frequency" else 1, str(v))
    if key == AGGREGATOR:
        return (0, 0 if v in (None, "fedavg") else 1, str(v))
    if v is None:
        return (0, float("-inf"), "")
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        # ε rows top-down from the largest (paper's figs 1/2), everything else ascending.
        return (1, -v if key == "attack.fraction" else v, "")
    return (2, 0, str(v))


def _attack_spec(kind: Any):
    """The registered attack (its report label and rank), None for a kind this engine does
    not know (a run from another version prints its kind as given)."""
    from fl_core.attacks import ATTACKS  # torch-free

    return ATTACKS.get(kind) if isinstance(kind, str) else None


def aggregator_label(config: Mapping[str, Any]) -> str:
    """The cell's aggregator as its registry entry prints it (e.g. "Krum f=3"), from the
    dotted `defense.aggregator` and its `defense.aggregator_params.*`. The runs' frame has a
    column for every aggregator's parameters (empty for the others), so only the named one's
    fields are read. A name or params this engine does not know print as given."""
    name = na_to_none(config.get(AGGREGATOR)) or "fedavg"
    from fl_core.aggregators import AGGREGATORS  # imports torch: only when aggregators vary

    spec = AGGREGATORS.get(name)
    if spec is None:
        return str(name)
    params = {f: v for f in spec.params.model_fields
              if (v := na_to_none(config.get(AGGREGATOR_PARAMS + f))) is not None}
    try:
        # lax: the frame's columns hold an int parameter as a float (3.0) beside empty cells
        return spec.label(spec.params.model_validate(params, strict=False))
    except ValueError:  # pydantic's ValidationError: params from another engine version
        return str(name)


def format_value(key: str, v: Any) -> str:
    v = na_to_none(v)
    if key == "attack.kind":
        spec = _attack_spec(v)
        return spec.label if spec else str(v)
    if key == "attack.fraction":
        return "–" if v is None else f"{v * 100:.3g}%"
    if key == "defense.norm_bound" and v is None:
        return "off"
    if isinstance(v, float):
        return f"{v:g}"
    return "–" if v is None else str(v)


PREAGGREGATION = "defense.preaggregation"
PREAGGREGATION_PARAMS = "defense.preaggregation_params."


def preaggregation_label(config: Mapping[str, Any]) -> str:
    """`defense.preaggregation` and its steps' params as one part ("NNM f=2 → bucketing s=2"),
    "no pre-aggregation" without steps."""
    from fl_core.preaggregators.base import pipeline_label

    params: dict[str, dict] = {}
    for k, v in config.items():
        if k.startswith(PREAGGREGATION_PARAMS) and na_to_none(v) is not None:
            step, _, name = k[len(PREAGGREGATION_PARAMS):].partition(".")
            params.setdefault(step, {})[name] = na_to_none(v)
    steps = na_to_none(config.get(PREAGGREGATION))
    return pipeline_label(steps, params) or "no pre-aggregation"


def label_for(config: Mapping[str, Any], keys: Iterable[str]) -> str:
    """Human label of a cell from its values of `keys` (paper notation)."""
    parts = []
    baseline = na_to_none(config.get("attack.kind")) == "none"
    aggregator_done = preaggregation_done = False
    for k in keys:
        if baseline and k.startswith("attack.") and k != "attack.kind":
            continue  # attack settings mean nothing without an attack
        if k == PREAGGREGATION or k.startswith(PREAGGREGATION_PARAMS):
            if not preaggregation_done:  # one part for the steps and their parameters
                parts.append(preaggregation_label(config))
                preaggregation_done = True
            continue
        if k == AGGREGATOR or k.startswith(AGGREGATOR_PARAMS):
            if not aggregator_done:  # one part for the name and its parameters
                parts.append(aggregator_label(config))
                aggregator_done = True
            continue
        if k.startswith(ATTACK_PARAMS):  # the attack's own parameter: only where it applies
            v = na_to_none(config.get(k))
            if v is not None:
                parts.append(f"{k[len(ATTACK_PARAMS):]}={format_value(k, v)}")
            continue
        val = format_value(k, config.get(k))
        if k in ("attack.kind", "attack.schedule"):
            parts.append(val)
        else:
            parts.append(f"{SHORT.get(k, k)}={val}")
    return ", ".join(parts)


def _ordered_keys(keys: Iterable[str]) -> list[str]:
    """KEY_ORDER first, an attack's own parameters right after `attack.kind`, then the rest
    alphabetically."""
    keys = list(keys)
    params = sorted(k for k in keys if k.startswith(ATTACK_PARAMS))
    first = []
    for k in KEY_ORDER:
        if k in keys:
            first += [k] + (params if k == "attack.kind" else [])
    return first + sorted(k for k in keys if k not in first)


def _seedless_warmups(runs: pd.DataFrame) -> pd.DataFrame:
    """A grid's shared warm-up is one per seed (`fl.init: warmups/<key of seed s>`): for
    telling cells apart it is the same start, like the seed itself is the same cell."""
    if "fl.init" not in runs.columns:
        return runs
    runs = runs.copy()
    runs["fl.init"] = runs["fl.init"].map(
        lambda v: "shared warm-up" if isinstance(v, str) and is_warmup_ref(v) else v)
    return runs


# A key whose value follows from the cell's attack or aggregator (what `attack.kind: dba`
# resolves `attack.backdoor`, its params and `attack.recipe` to) tells no cells apart; the
# plug-ins' own parameters (`attack.params.*`, `defense.aggregator_params.*`) still label.
_PLUGIN_NAMES = ("attack.kind", AGGREGATOR)


def _drop_implied(runs: pd.DataFrame, keys: list[str]) -> list[str]:
    """`keys` without those that a varied plug-in name determines (one value per name)."""
    names = [k for k in _PLUGIN_NAMES if k in keys]
    hashed = {k: runs[k].map(_hashable) for k in keys}

    def implied(k: str) -> bool:
        return any(pd.DataFrame({"n": hashed[n], "k": hashed[k]}).groupby("n", dropna=False)["k"]
                   .nunique(dropna=False).max() <= 1 for n in names if n != k)

    def varies_within_its_plugin(k: str) -> bool:
        """A plug-in's own parameter labels cells only where it tells two cells of the SAME
        plug-in apart: the defaults of every attack in a grid that varies attack.kind are a
        different column per attack, not a varied setting (Min-Max's gamma_init=10 would
        label every Min-Max cell)."""
        name = "attack.kind" if k.startswith(ATTACK_PARAMS) else AGGREGATOR
        if name not in runs.columns:
            return True
        by = runs[name].map(_hashable)
        return bool(pd.DataFrame({"n": by, "k": hashed[k]}).groupby("n", dropna=False)["k"]
                    .nunique(dropna=False).max() > 1)

    own = (ATTACK_PARAMS, AGGREGATOR_PARAMS)  # a plug-in's own parameters label its cells
    return [k for k in keys if k in names or (varies_within_its_plugin(k) if k.startswith(own) else not implied(k))]


def assign_cells(runs: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Add `cell` and `cell_index`; return the frame and the keys that define cells."""
    out = runs
    runs = _seedless_warmups(runs)
    config_cols = [c for c in runs.columns if "." in c]
    varied = [
        c for c in config_cols
        if c not in NON_CELL_KEYS and runs[c].map(_hashable).nunique(dropna=False) > 1
    ]
    keys = _drop_implied(runs, _ordered_keys(varied))
    label_keys = keys or [k for k in ("attack.kind", "attack.fraction", "attack.schedule",
                                      "defense.norm_bound", "defense.noise_sigma")
                          if k in runs.columns]
    rows = runs.to_dict("records")
    labels = [label_for(row, label_keys) for row in rows]
    runs = out.copy()
    runs["cell"] = labels
    if "seed" not in runs.columns:
        runs["seed"] = 0
    sort_rows = sorted(
        {cell: tuple(_sort_value(k, row.get(k)) for k in keys)
         for cell, row in zip(labels, rows)}.items(),
        key=lambda kv: kv[1],
    )
    index = {cell: i for i, (cell, _) in enumerate(sort_rows)}
    runs["cell_index"] = runs["cell"].map(index).astype(int)
    return runs, keys
