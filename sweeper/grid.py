"""Grid files: the YAML schema of a sweep and its expansion into trials.

A grid file names a sweep, gives a `base` config (a partial `SimulationConfig`, as for
`fl-sweep simulate`), a `grid` of dotted keys → lists of values, and `seeds`. The trials
are the Cartesian product of the grid axes in declared order (the first key varies
slowest) with the seeds as the innermost axis. Every key and every expanded config is
validated here, before Ray starts or anything is written: a bad file raises one
`GridError` that names the file, the key and what is allowed (Hydra's structured-config
idea, without a global registry). The trial key is `config_hash(config)`, so reordering
keys in the YAML changes no trial key.

Example::

    name: clip-vs-tasks
    base: {data: {source: embedded}, attack: {kind: model-replacement, fraction: 0.03}}
    grid: {defense.norm_bound: [3, 5, 10], attack.num_tasks: [10, 30]}
    seeds: 2
    resources: {workers: 2}
"""

from __future__ import annotations

import copy
import difflib
import functools
import itertools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fl_core.config import (
    DataConfig,
    SimulationConfig,
    all_keys,
    is_plugin_param,
    config_hash,
    parse_config,
    set_dotted,
)
from fl_core.errors import ConfigError, FLCoreError, UnknownKeyError
from sweeper import yamlio
from sweeper.errors import GridError
from sweeper.warmup import WarmupSpec, init_ref, warmup_key, warmup_raw
from sweeper.yamlio import short

#: THE rule for sweep names, the grid's `name:` and `run --name` alike: the name is a
#: directory under the storage root and appears in commands and MLflow filters, so no
#: separator, no dot-only name, no quote, space or control character. (\Z, not $: Python's
#: `$` also matches before a final newline, which let `--name $'x\n'` through.)
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}\Z"
NAME_RULE = "1 to 80 characters out of letters, digits, _ . - starting with a letter or digit"


def name_problem(name: object) -> str | None:
    """Why `name` is not a valid sweep name (None if it is)."""
    if isinstance(name, str) and re.match(NAME_PATTERN, name):
        return None
    return f"invalid sweep name {short(name)}; allowed: {NAME_RULE}"


class _Strict(BaseModel):
    """As fl_core's config models: frozen, unknown keys refused, no NaN/inf, strict types
    (`seeds: true` or `max_concurrent_trials: "2"` is refused, not read as 1 or 2)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False, strict=True)


class Resources(_Strict):
    """What one trial reserves: a head bundle for the trial process (simulation loop,
    aggregation, evaluation) plus one bundle per client-worker actor."""

    workers: int | None = Field(
        None, ge=1, le=1024,
        description="client-worker actors per trial; sets fl.workers in every trial "
        "(null keeps the config's fl.workers)",
    )
    executor: Literal["actors", "in-process"] = Field(
        "actors",
        description="actors: clients train in fl.workers Ray actors; in-process: in the "
        "trial process itself (no actor bundles; cheapest for tiny sweeps)",
    )
    cpus_per_trial: float = Field(1.0, gt=0, le=1024, description="CPUs of the trial process")
    cpus_per_worker: float = Field(1.0, gt=0, le=1024, description="CPUs of each client worker")
    gpus_per_trial: float = Field(
        0.0, ge=0, le=64,
        description="GPUs per trial, fractions allowed (0.25 = four trials share a GPU); "
        "split evenly over the trial's bundles; ignored with a note when the cluster "
        "has no GPU",
    )


class Tracking(_Strict):
    experiment: str | None = Field(
        None, min_length=1, max_length=200,
        description="MLflow experiment name (default: the grid's name)",
    )


class GridFile(_Strict):
    name: str = Field(description=f"sweep name: {NAME_RULE}")
    description: str = Field("", description="free text, shown in status and MLflow")
    base: dict[str, Any] = Field(default_factory=dict, description="a partial SimulationConfig")
    grid: dict[str, list[Any]] = Field(
        default_factory=dict, description="dotted config key → list of values (Cartesian product)"
    )
    seeds: list[int] | int | None = Field(
        None, description="list of seeds, or a count n meaning seeds 0..n-1 "
        "(default: the base config's seed)",
    )
    resources: Resources = Field(default_factory=Resources)
    max_concurrent_trials: int | None = Field(
        None, ge=1, description="at most this many trials at once (default: as many as fit)"
    )
    tracking: Tracking = Field(default_factory=Tracking)
    warmup: WarmupSpec | None = Field(
        None, description="a shared clean warm-up per seed that every trial of that seed starts "
        "from (sweeper/warmup.py)",
    )


@dataclass(frozen=True)
class TrialSpec:
    """One expanded trial.

    Attributes:
        index: position in the expansion order (0-based).
        trial_key: `config_hash(config)`: the MLflow tag and the resume identity.
        config: the resolved, validated config.
        overrides: the varied keys (grid axes, plus `seed` when seeds are swept) and
            this trial's values, in declared order.
    """

    index: int
    trial_key: str
    config: SimulationConfig
    overrides: dict[str, Any]

    @property
    def short_key(self) -> str:
        return self.trial_key[:8]


@dataclass(frozen=True)
class Grid:
    """A validated grid file and its trials."""

    path: str
    spec: GridFile
    trials: tuple[TrialSpec, ...]
    varied_keys: tuple[str, ...]
    text: str
    #: warm-up key → its config (empty without a `warmup:` section); trials name theirs in fl.init
    warmups: dict[str, SimulationConfig] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def experiment(self) -> str:
        return self.spec.tracking.experiment or self.spec.name


# -- YAML ------------------------------------------------------------------------------


def _read_yaml(path: Path) -> tuple[dict[str, Any], str]:
    raw, text = yamlio.read_yaml(path)
    if raw is None:
        raise GridError(str(path), "(top level)", "the file is empty; a grid needs at least "
                        "`name:` and a `grid:` or `seeds:`")
    if not isinstance(raw, dict):
        raise GridError(
            str(path), "(top level)",
            f"expected a mapping with keys {', '.join(GridFile.model_fields)}; "
            f"got {type(raw).__name__}",
        )
    return raw, text


# -- validation ------------------------------------------------------------------------


def _model_for(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] = GridFile
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None:
            return model
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            return None
    return model


def _grid_file_error(file: str, e: ValidationError) -> GridError:
    err = e.errors()[0]
    loc = tuple(err["loc"])
    key = ".".join(str(p) for p in loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        model = _model_for(loc[:-1]) or GridFile
        known = list(model.model_fields)
        near = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
        hint = f"did you mean `{'.'.join([*map(str, loc[:-1]), near[0]])}`? " if near else ""
        return GridError(file, key, f"unknown key; {hint}allowed keys here: {', '.join(known)}")
    if err["type"] == "missing":
        return GridError(file, key, "required key is missing")
    if loc and loc[0] == "seeds":  # a union: pydantic's loc names its members, not the key
        return GridError(file, "seeds", f"invalid value {short(raw_value(e, 'seeds'))}: expected a "
                         "list of integer seeds (e.g. [0, 1, 2]) or a count (e.g. 3)")
    model = _model_for(loc[:-1])
    field = model.model_fields.get(str(loc[-1])) if model and loc else None
    if loc and loc[0] == "grid" and len(loc) >= 2:
        key = f"grid.{loc[1]}"
        if len(loc) == 2:
            return GridError(file, key, f"invalid value {short(err.get('input'))}: {err['msg']}; "
                             "each grid key takes a list of values, e.g. [1, 2]")
    desc = f" ({field.description})" if field is not None and field.description else ""
    return GridError(file, key, f"invalid value {short(err.get('input'))}: {err['msg']}{desc}")


def raw_value(e: ValidationError, key: str) -> Any:
    for err in e.errors():
        if err["loc"] and err["loc"][0] == key:
            return err.get("input")
    return None


def _validate_grid_keys(file: str, grid: dict[str, list[Any]]) -> None:
    keys = set(all_keys())
    for key, values in grid.items():
        if key not in keys and not is_plugin_param(key):
            near = difflib.get_close_matches(key, sorted(keys), n=1, cutoff=0.6)
            hint = f"did you mean `{near[0]}`? " if near else ""
            raise GridError(
                file, f"grid.{key}",
                f"unknown config key; {hint}valid keys: {', '.join(sorted(keys))}",
            )
        if not values:
            raise GridError(file, f"grid.{key}", "empty list of values; give at least one value")
        for v in values:
            if isinstance(v, (dict, list)):
                raise GridError(
                    file, f"grid.{key}",
                    f"value {short(v)} is a {type(v).__name__}; grid values are scalars "
                    "(use one dotted key per leaf, e.g. defense.norm_bound)",
                )
            _check_value(file, key, v)


def _check_value(file: str, key: str, value: Any) -> None:
    """One axis value on its own (type and bounds of its field), so that a bad value is
    reported as such rather than as whichever cross-field rule its trial trips first."""
    parts = key.split(".")
    model: type[BaseModel] = SimulationConfig
    for p in parts[:-1]:
        model = model.model_fields[p].annotation  # type: ignore[assignment]
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return  # inside a mapping (defense.aggregator_params.*): the trial check validates it
    if model is SimulationConfig:
        return  # top-level keys (seed) have no cross-field interplay: the trial check suffices
    try:
        model.model_validate({parts[-1]: value})
    except ValidationError as e:
        err = e.errors()[0]
        desc = model.model_fields[parts[-1]].description
        raise GridError(
            file, f"grid.{key}",
            f"invalid value {short(value)}: {err['msg']}" + (f" ({desc})" if desc else ""),
        ) from None
    except ConfigError as e:  # a plug-in name or its params, checked against the registry
        raise GridError(file, f"grid.{key}", f"invalid value {short(value)}; allowed: {e.allowed}") from None


def load_grid(path: str | Path, allow_large: bool = False) -> Grid:
    """Read, validate and expand a grid file. Touches nothing but the file itself.

    The number of trials (product of the axis lengths × seeds) is computed before the
    expansion and refused above MAX_TRIALS unless `allow_large` (`--allow-large`).

    Raises:
        GridError: anything wrong with the file, naming the file, the key and what is
            allowed.
    """
    p = Path(path)
    file = str(path)
    raw, text = _read_yaml(p)
    try:
        spec = GridFile.model_validate(raw)
    except ValidationError as e:
        raise _grid_file_error(file, e) from None

    problem = name_problem(spec.name)
    if problem:
        raise GridError(file, "name", problem)
    grid = dict(spec.grid or {})
    seeds = _seeds(file, spec, allow_large)
    if not grid and seeds is None:
        raise GridError(
            file, "grid",
            "the grid is empty: give at least one dotted config key with a list of values "
            "(e.g. `attack.fraction: [0.01, 0.03]`) or a `seeds:` list/count",
        )
    _validate_grid_keys(file, grid)
    if "seed" in grid and seeds is not None:
        raise GridError(file, "seeds", "both `grid.seed` and `seeds` are given; keep one")
    if spec.resources.workers is not None and "fl.workers" in grid:
        raise GridError(
            file, "resources.workers",
            "both `resources.workers` and `grid.fl.workers` are given; keep one",
        )
    if spec.resources.executor == "in-process" and "fl.workers" in grid:
        raise GridError(
            file, "grid.fl.workers",
            "resources.executor = in-process runs no client workers; sweeping fl.workers "
            "needs executor: actors",
        )

    # The base must be valid on its own (except for cross-field rules a grid axis may
    # complete), so its errors point at `base.<key>`, not at a trial.
    base = copy.deepcopy(spec.base)
    if spec.resources.workers is not None:
        set_dotted(base, "fl.workers", spec.resources.workers)
    _check_base_keys(file, base)

    if spec.warmup is not None:
        _check_warmup(file, spec.warmup, base, grid)
    warmups: dict[str, SimulationConfig] = {}

    axes = list(grid.items())
    if seeds is not None:
        axes.append(("seed", seeds))
    _check_size(file, axes, allow_large)
    varied = tuple(k for k, _ in axes)
    trials: list[TrialSpec] = []
    by_key: dict[str, int] = {}
    for index, combo in enumerate(itertools.product(*(vals for _, vals in axes))):
        raw_cfg = copy.deepcopy(base)
        overrides = dict(zip(varied, combo))
        for k, v in overrides.items():
            set_dotted(raw_cfg, k, v)
        if spec.warmup is not None:
            wkey, wcfg = _warmup_for(file, spec.warmup, base, raw_cfg)
            warmups[wkey] = wcfg
            set_dotted(raw_cfg, "fl.init", init_ref(wkey))
        cfg = _parse_trial(file, raw_cfg, overrides, grid)
        if spec.warmup is not None and cfg.fl.rounds <= spec.warmup.rounds:
            raise GridError(
                file, "warmup.rounds",
                f"{spec.warmup.rounds} warm-up rounds leave nothing to run in the trial {overrides} "
                f"(fl.rounds = {cfg.fl.rounds} counts the warm-up's rounds too); allowed: "
                f"less than {cfg.fl.rounds}",
            )
        _check_data_fit(file, cfg, overrides)
        _check_resources(file, cfg, spec.resources)
        key = config_hash(cfg)
        if key in by_key:
            raise GridError(
                file, "grid",
                f"trials {by_key[key]} and {index} have the same config ({short(overrides)}); "
                "remove the duplicate value",
            )
        by_key[key] = index
        trials.append(TrialSpec(index, key, cfg, overrides))
    return Grid(file, spec, tuple(trials), varied, text, warmups)


def _check_warmup(file: str, w: WarmupSpec, base: dict[str, Any], grid: dict[str, list[Any]]) -> None:
    """A warm-up is clean FedAvg on the trials' own data: no attack/defense overrides, no
    grid axis that changes the data (the trials would continue on other writers)."""
    for k in w.overrides:
        if k.split(".")[0] in ("attack", "defense", "seed") or k in ("fl.rounds", "fl.init"):
            raise GridError(
                file, f"warmup.overrides.{k}",
                "a warm-up is clean FedAvg with its own `rounds`; allowed: data-independent "
                "fl.* keys such as fl.local_epochs or fl.eval_every",
            )
        if k.startswith("data."):
            raise GridError(file, f"warmup.overrides.{k}", "the warm-up trains on the trials' data; "
                            "allowed: fl.* keys")
    for k in grid:
        if k.startswith("data.") or k == "fl.init":
            raise GridError(
                file, f"grid.{k}",
                f"with a `warmup:` section every trial of a seed starts from the same warm-up, so "
                f"{k} cannot vary; allowed: a grid without {k}, or no warmup section",
            )
    init = (base.get("fl") or {}).get("init", "random")
    if init != "random":
        raise GridError(file, "base.fl.init", f"{init!r} conflicts with the `warmup:` section; "
                        "allowed: random (or drop the warmup section)")


def _warmup_for(file: str, w: WarmupSpec, base: dict[str, Any], trial_raw: dict[str, Any]):
    """(key, config) of the warm-up of the trial whose raw config is `trial_raw`."""
    seed = int(trial_raw.get("seed", 0))
    try:
        cfg = parse_config(warmup_raw(base, w, seed), source=file)
    except ConfigError as e:
        raise GridError(file, f"warmup ({e.path})", f"invalid value {e.value!r}; allowed: {e.allowed}") from None
    return warmup_key(cfg), cfg


MAX_TRIALS = 10_000


def _check_size(file: str, axes: list[tuple[str, list[Any]]], allow_large: bool) -> None:
    """Refuse a grid of more than MAX_TRIALS trials before expanding it (a typo such as
    `seeds: 1000000` would otherwise validate for hours)."""
    n = math.prod(len(v) for _, v in axes)
    if n > MAX_TRIALS and not allow_large:
        sizes = " × ".join(f"{len(v)} ({k})" for k, v in axes)
        raise GridError(
            file, "grid" if len(axes) > 1 or axes[0][0] != "seed" else "seeds",
            f"{sizes} = {n:,} trials, more than {MAX_TRIALS:,}; shrink the grid, or pass "
            "--allow-large if you mean it",
        )


def _seeds(file: str, spec: GridFile, allow_large: bool = False) -> list[int] | None:
    s = spec.seeds
    if s is None:
        return None
    if isinstance(s, int):
        if s < 1:
            raise GridError(file, "seeds", f"invalid count {s}; give a count ≥ 1 or a list of seeds")
        if s > MAX_TRIALS and not allow_large:
            raise GridError(file, "seeds", f"{s:,} seeds = {s:,} trials at least, more than "
                            f"{MAX_TRIALS:,}; give fewer, or pass --allow-large if you mean it")
        return list(range(s))
    if not s:
        raise GridError(file, "seeds", "empty list; give seeds such as [0, 1, 2] or a count")
    if len(set(s)) != len(s):
        raise GridError(file, "seeds", f"duplicate seeds in {short(s)}")
    for v in s:
        if v < 0:
            raise GridError(file, "seeds", f"invalid seed {v}; seeds are integers ≥ 0")
    return list(s)


def _check_base_keys(file: str, base: dict[str, Any]) -> None:
    try:
        parse_config(base, source=file)
    except ConfigError as e:
        if isinstance(e, UnknownKeyError):  # a misspelt key (or a plug-in's parameter name)
            raise GridError(file, f"base.{e.path}", f"unknown key; {e.allowed}") from None
        # A value error in the base is reported now only if it is not a cross-field rule
        # that a grid axis could satisfy (e.g. `attack.fraction` swept for an attack kind).
        if not _is_cross_field(e):
            raise GridError(
                file, f"base.{e.path}", f"invalid value {short(e.value)}; allowed: {e.allowed}"
            ) from None


def _is_cross_field(e: ConfigError) -> bool:
    return e.value is None or " when " in e.allowed or "other than" in e.allowed


def _parse_trial(
    file: str, raw: dict[str, Any], overrides: dict[str, Any], grid: dict[str, list[Any]]
) -> SimulationConfig:
    try:
        return parse_config(raw, source=file)
    except ConfigError as e:
        where = f"grid.{e.path}" if e.path in grid else (
            "seeds" if e.path == "seed" else f"base.{e.path}"
        )
        raise GridError(
            file, where,
            f"invalid value {short(e.value)} in the trial {short(overrides)}; allowed: {e.allowed}",
        ) from None


# -- data-aware checks ------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def data_summary(data: DataConfig, seed: int):
    """`fl_core.data.describe_data`, once per data config (metadata only: no pixels, no
    torch). Raises what it raises (DatasetError for missing or malformed files)."""
    from fl_core.data import describe_data

    return describe_data(data, seed)


def _check_data_fit(file: str, cfg: SimulationConfig, overrides: dict[str, Any]) -> None:
    """The data source exists and the trial fits it: enough writers for N targets and the
    cohort, and the engine's own population checks (target writers need a source-label
    image; ε·K must give ≥ 1 attacker; attackers exclude targets) on the writers' labels,
    all before anything runs."""

    def where(key: str) -> str:
        return f"grid.{key}" if key in overrides else f"base.{key}"

    try:
        summary = data_summary(cfg.data, cfg.seed if cfg.data.source == "synthetic" else 0)
    except FLCoreError as e:  # a DatasetError (missing/malformed files) or an unknown source
        key = "data.path" if cfg.data.path else "data.source"
        raise GridError(file, where(key), str(e)) from None
    k = summary.num_writers
    if k is None:  # LEAF: the layout is checked; K needs every example (the trial checks)
        return
    src = f"data.source = {cfg.data.source}" + (
        f", data.max_writers = {cfg.data.max_writers}" if cfg.data.max_writers else ""
    )
    if cfg.attack.num_tasks > k:
        raise GridError(
            file, where("attack.num_tasks"),
            f"N = {cfg.attack.num_tasks} backdoor tasks (target writers) but the data has only "
            f"K = {k} writers ({src}); allowed: 1..{k}",
        )
    if cfg.fl.sampling == "without-replacement" and cfg.fl.clients_per_round > k:
        raise GridError(
            file, where("fl.clients_per_round"),
            f"{cfg.fl.clients_per_round} clients per round drawn without replacement from "
            f"K = {k} writers ({src}); allowed: 1..{k}",
        )
    if summary.labels is None:  # lazy or large: the trial checks when it walks the writers
        return
    from fl_core.data.backdoor import select_backdoor
    from fl_core.sampling import attacker_pool

    try:
        reserved = select_backdoor(cfg, summary.labels).reserved
        attacker_pool(cfg, k, reserved)
    except ConfigError as e:
        raise GridError(
            file, where(e.path), f"invalid value {short(e.value)} in the trial {short(overrides)}; "
            f"allowed: {e.allowed}",
        ) from None


def _check_resources(file: str, cfg: SimulationConfig, res: Resources) -> None:
    if cfg.fl.device == "cuda" and res.gpus_per_trial == 0:
        raise GridError(
            file, "resources.gpus_per_trial",
            "fl.device = cuda needs a GPU share per trial (e.g. 0.5); or use fl.device: auto",
        )
    # torch runs fl.threads threads in the trial (evaluation, in-process training) and in
    # each worker; Ray does not cap them, so more threads than reserved CPUs oversubscribe
    threads = getattr(cfg.fl, "threads", 1)
    procs = [("cpus_per_trial", res.cpus_per_trial)]
    if res.executor == "actors":
        procs.append(("cpus_per_worker", res.cpus_per_worker))
    for key, cpus in procs:
        if threads > max(1, math.floor(cpus + 1e-9)):
            raise GridError(
                file, f"resources.{key}",
                f"{cpus:g} CPUs for fl.threads = {threads} torch threads; reserve at least "
                f"{threads} or lower fl.threads",
            )


# -- resources and the trial table -------------------------------------------------------


def bundles(cfg: SimulationConfig, res: Resources, gpus_available: bool = True) -> list[dict[str, float]]:
    """Placement-group bundles of one trial: [trial head, worker 1, ..., worker W].

    The trial's GPU share is split evenly over the bundles that touch the model (with
    actors: the head evaluates, the workers train). With no GPU in the cluster the GPU
    request is dropped (the trial then runs on CPU).
    """
    gpu = res.gpus_per_trial if gpus_available else 0.0
    if res.executor == "in-process":
        head = {"CPU": res.cpus_per_trial}
        if gpu:
            head["GPU"] = gpu
        return [head]
    n = cfg.fl.workers
    # Ray keeps resource amounts to 4 decimals: round down so the shares never exceed `gpu`
    share = math.floor(gpu / (n + 1) * 10_000) / 10_000 if gpu else 0.0
    out = [{"CPU": res.cpus_per_trial}] + [{"CPU": res.cpus_per_worker} for _ in range(n)]
    if share:
        for b in out:
            b["GPU"] = share
    return out


def trial_rows(grid: Grid) -> list[dict[str, Any]]:
    """The resolved trial table (also written as trials.csv)."""
    rows = []
    for t in grid.trials:
        b = bundles(t.config, grid.spec.resources)
        rows.append(
            {
                "index": t.index,
                "trial_key": t.trial_key,
                **{k: t.overrides[k] for k in grid.varied_keys},
                "rounds": t.config.fl.rounds,
                "workers": 0 if grid.spec.resources.executor == "in-process" else t.config.fl.workers,
                "cpus": sum(x.get("CPU", 0.0) for x in b),
                "gpus": sum(x.get("GPU", 0.0) for x in b),
            }
        )
    return rows
