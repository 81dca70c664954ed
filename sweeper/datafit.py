"""Does each trial fit its data? Checked at `validate`/`run` time, from the data source's
metadata (`fl_core.data.describe_data`: writer counts and labels, no pixels, no torch), so
a missing dataset or a cohort larger than the population fails before Ray starts. The
writers are counted as the trial will see them: after `data.min_examples` drops the small
ones and `data.max_writers` cuts."""

from __future__ import annotations

import functools
from typing import Any

from fl_core.config import DataConfig, SimulationConfig
from fl_core.errors import ConfigError, FLCoreError
from sweeper.errors import GridError
from sweeper.yamlio import short


@functools.lru_cache(maxsize=32)
def data_summary(data: DataConfig, seed: int):
    """`fl_core.data.describe_data`, once per data config (metadata only: no pixels, no
    torch). Raises what it raises (DatasetError for missing or malformed files)."""
    from fl_core.data import describe_data

    return describe_data(data, seed)


def check_data_fit(file: str, cfg: SimulationConfig, overrides: dict[str, Any]) -> None:
    """The data source exists and the trial fits it: enough writers for N targets and the
    cohort, and the engine's own population checks (target writers need a source-label
    image; ε·K must give ≥ 1 attacker; attackers exclude targets) on the writers' labels,
    all before anything runs."""

    def where(key: str) -> str:
        return f"grid.{key}" if key in overrides else f"base.{key}"

    try:
        summary = data_summary(cfg.data, cfg.seed if cfg.data.source == "synthetic" else 0)
    except ConfigError as e:  # data.min_examples on a lazy population, or above every writer
        raise GridError(file, where(e.path), f"invalid value {short(e.value)}; allowed: {e.allowed}") from None
    except FLCoreError as e:  # a DatasetError (missing/malformed files) or an unknown source
        key = "data.path" if cfg.data.path else "data.source"
        raise GridError(file, where(key), str(e)) from None
    k = summary.num_writers  # after data.min_examples and data.max_writers (describe_data)
    if k is None:  # LEAF: the layout is checked; K needs every example (the trial checks)
        return
    src = f"data.source = {cfg.data.source}" + (
        f", data.min_examples = {cfg.data.min_examples}" if cfg.data.min_examples else ""
    ) + (f", data.max_writers = {cfg.data.max_writers}" if cfg.data.max_writers else "")
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
    from fl_core.backdoors import select_backdoor
    from fl_core.sampling import attacker_pool

    try:
        reserved = select_backdoor(cfg, summary.labels).reserved
        attacker_pool(cfg, k, reserved)
    except ConfigError as e:
        raise GridError(
            file, where(e.path), f"invalid value {short(e.value)} in the trial {short(overrides)}; "
            f"allowed: {e.allowed}",
        ) from None


def pool_rows(trials) -> tuple[list[dict[str, Any]], list[str]]:
    """The attacker pool of each distinct (data, seed, ε, pool rule, ...) among the attacked
    `trials` beside its population (`fl_core.pool_profile`), for `fl-sweep validate`:
    (rows, notes). A population whose labels the metadata does not give (lazy, LEAF, large
    synthetic) is named in a note instead. Computed with the engine's own target selection
    and pool draw on the writers' labels: what the trials will draw."""
    from fl_core.pool_profile import pool_key, pool_profile

    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    seen: set = set()
    for t in trials:
        cfg = t.config
        if cfg.attack.kind == "none":
            continue
        key = (cfg.data, pool_key(cfg))
        if key in seen:
            continue
        seen.add(key)
        try:
            summary = data_summary(cfg.data, cfg.seed if cfg.data.source == "synthetic" else 0)
        except FLCoreError:
            continue  # check_data_fit has said why
        if summary.labels is None:
            note = f"{summary.name}: the pool is drawn when the trial walks the writers (no labels in the metadata)"
            if note not in notes:
                notes.append(note)
            continue
        try:
            p = pool_profile(cfg, summary.labels)
        except ConfigError:
            continue  # check_data_fit has said why
        if p is None:
            continue
        rows.append({"data": summary.name, "backdoor": cfg.attack.backdoor, "fraction": cfg.attack.fraction,
                     "pool_rule": cfg.attack.pool_rule, "seed": cfg.seed, "pool": p.pool,
                     "population": p.population})
    rows.sort(key=lambda r: (r["data"], r["backdoor"], r["fraction"], r["pool_rule"], r["seed"]))
    return rows, notes
