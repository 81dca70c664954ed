"""The grid file's schema (pydantic) and what a loaded grid is: `GridFile` is the YAML as
written, `Grid` and `TrialSpec` the validated, expanded result (`sweeper.grid.load_grid`).

Also THE rule for sweep names, which the grid's `name:`, `run --name` and the storage
layout share.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from fl_core.config import SimulationConfig
from sweeper.warmup import WarmupSpec
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
    plugin_params: dict[str, dict[str, dict[str, Any]]] = Field(
        default_factory=dict,
        description="each plug-in's own settings by family (attack, backdoor, aggregator, "
        "preaggregation) and name, applied to a trial only when it chooses that plug-in "
        "(sweeper/plugin_params.py); e.g. {aggregator: {fldetector: {start_round: 30}}}",
    )
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
