"""Expanding a checked grid file into its trials: seeds, the Cartesian product, warm-ups.

The trials are the product of the grid axes in declared order (the first key varies
slowest) with the seeds as the innermost axis. With a `warmup:` section every trial of a
seed starts from that seed's shared warm-up (`sweeper.warmup`), named in its fl.init. The
trial key is `config_hash(config)`, so reordering keys in the YAML changes no trial key;
two trials with one key are refused.

The trial limit is the caller's (`sweeper.grid.MAX_TRIALS`, lifted by `--allow-large`):
it is checked before the product is built, so a typo such as `seeds: 1000000` fails at
once instead of validating for hours.
"""

from __future__ import annotations

import copy
import itertools
import math
from typing import Any, Callable

from fl_core.config import SimulationConfig, config_hash, parse_config, set_dotted
from fl_core.errors import ConfigError
from sweeper import plugin_params
from sweeper.errors import GridError
from sweeper.gridspec import GridFile, TrialSpec
from sweeper.warmup import WarmupSpec, init_ref, warmup_key, warmup_raw
from sweeper.yamlio import short

#: what the caller checks of each parsed trial before it is keyed (data fit, resources)
TrialCheck = Callable[[SimulationConfig, dict[str, Any]], None]


def seed_list(file: str, spec: GridFile, limit: int, allow_large: bool = False) -> list[int] | None:
    """The `seeds:` section as a list (a count n means 0..n-1); None without one."""
    s = spec.seeds
    if s is None:
        return None
    if isinstance(s, int):
        if s < 1:
            raise GridError(file, "seeds", f"invalid count {s}; give a count ≥ 1 or a list of seeds")
        if s > limit and not allow_large:
            raise GridError(file, "seeds", f"{s:,} seeds = {s:,} trials at least, more than "
                            f"{limit:,}; give fewer, or pass --allow-large if you mean it")
        return list(range(s))
    if not s:
        raise GridError(file, "seeds", "empty list; give seeds such as [0, 1, 2] or a count")
    if len(set(s)) != len(s):
        raise GridError(file, "seeds", f"duplicate seeds in {short(s)}")
    for v in s:
        if v < 0:
            raise GridError(file, "seeds", f"invalid seed {v}; seeds are integers ≥ 0")
    return list(s)


def axes_of(spec: GridFile, seeds: list[int] | None) -> list[tuple[str, list[Any]]]:
    """The grid's axes in declared order, the seeds last (innermost)."""
    axes = list(spec.grid.items())
    if seeds is not None:
        axes.append(("seed", seeds))
    return axes


def check_size(file: str, axes: list[tuple[str, list[Any]]], limit: int, allow_large: bool) -> None:
    """Refuse more than `limit` trials before expanding them."""
    n = math.prod(len(v) for _, v in axes)
    if n > limit and not allow_large:
        sizes = " × ".join(f"{len(v)} ({k})" for k, v in axes)
        raise GridError(
            file, "grid" if len(axes) > 1 or axes[0][0] != "seed" else "seeds",
            f"{sizes} = {n:,} trials, more than {limit:,}; shrink the grid, or pass "
            "--allow-large if you mean it",
        )


def check_warmup(file: str, w: WarmupSpec, base: dict[str, Any], grid: dict[str, list[Any]]) -> None:
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


def expand(
    file: str, spec: GridFile, base: dict[str, Any], axes: list[tuple[str, list[Any]]],
    check: TrialCheck,
) -> tuple[list[TrialSpec], dict[str, SimulationConfig]]:
    """The trials, in expansion order, and the warm-ups they start from (key → config).

    Each trial is parsed, then `check`ed, then keyed, before the next one is built: the
    first bad trial in expansion order is the one reported.
    """
    varied = tuple(k for k, _ in axes)
    trials: list[TrialSpec] = []
    warmups: dict[str, SimulationConfig] = {}
    by_key: dict[str, int] = {}
    seen: dict[str, set[str]] = {}  # plug-ins chosen by some trial, per plugin_params family
    for index, combo in enumerate(itertools.product(*(vals for _, vals in axes))):
        raw_cfg = copy.deepcopy(base)
        overrides = dict(zip(varied, combo))
        for k, v in overrides.items():
            set_dotted(raw_cfg, k, v)
        origin = plugin_params.apply(spec.plugin_params, raw_cfg)
        for family in spec.plugin_params:
            seen.setdefault(family, set()).update(plugin_params.chosen(family, raw_cfg))
        if spec.warmup is not None:
            wkey, wcfg = _warmup_for(file, spec.warmup, base, raw_cfg)
            warmups[wkey] = wcfg
            set_dotted(raw_cfg, "fl.init", init_ref(wkey))
        cfg = _parse_trial(file, raw_cfg, overrides, spec.grid, origin)
        if spec.warmup is not None and cfg.fl.rounds <= spec.warmup.rounds:
            raise GridError(
                file, "warmup.rounds",
                f"{spec.warmup.rounds} warm-up rounds leave nothing to run in the trial {overrides} "
                f"(fl.rounds = {cfg.fl.rounds} counts the warm-up's rounds too); allowed: "
                f"less than {cfg.fl.rounds}",
            )
        check(cfg, overrides)
        key = config_hash(cfg)
        if key in by_key:
            raise GridError(
                file, "grid",
                f"trials {by_key[key]} and {index} have the same config ({short(overrides)}); "
                "remove the duplicate value",
            )
        by_key[key] = index
        trials.append(TrialSpec(index, key, cfg, overrides))
    plugin_params.check_used(file, spec.plugin_params, seen)
    return trials, warmups


def _warmup_for(file: str, w: WarmupSpec, base: dict[str, Any], trial_raw: dict[str, Any]):
    """(key, config) of the warm-up of the trial whose raw config is `trial_raw`."""
    seed = int(trial_raw.get("seed", 0))
    try:
        cfg = parse_config(warmup_raw(base, w, seed), source=file)
    except ConfigError as e:
        raise GridError(file, f"warmup ({e.path})", f"invalid value {e.value!r}; allowed: {e.allowed}") from None
    return warmup_key(cfg), cfg


def _parse_trial(
    file: str, raw: dict[str, Any], overrides: dict[str, Any], grid: dict[str, list[Any]],
    origin: dict[str, str] | None = None,
) -> SimulationConfig:
    """`raw` parsed; an error names where its key was set: `grid.<key>`, `seeds`,
    `plugin_params.<family>.<name>.<p>` (`origin`) or `base.<key>`."""
    try:
        return parse_config(raw, source=file)
    except ConfigError as e:
        where = f"grid.{e.path}" if e.path in grid else (
            "seeds" if e.path == "seed" else (origin or {}).get(e.path, f"base.{e.path}")
        )
        hint = plugin_params.hint(where.removeprefix("base."), grid) if where.startswith("base.") else ""
        raise GridError(
            file, where,
            f"invalid value {short(e.value)} in the trial {short(overrides)}; allowed: {e.allowed}{hint}",
        ) from None
