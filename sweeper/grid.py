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

`load_grid` is the one entry point; the work is split by concern, and this module
re-exports the names the rest of the sweeper uses:

- `sweeper.gridspec`: the schema (`GridFile`, `Resources`), `Grid`/`TrialSpec`, sweep names;
- `sweeper.gridfile`: reading the file, its sections, and pydantic's errors as `GridError`s;
- `sweeper.expand`: seeds, the Cartesian product, warm-ups, trial keys;
- `sweeper.plugin_params`: the `plugin_params` section (a plug-in's settings, applied to the
  trials that choose it);
- `sweeper.datafit`: each trial against its data source's metadata;
- `sweeper.resources`: each trial's reservation, its Ray bundles, the trial table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fl_core.config import SimulationConfig
from sweeper import expand as _expand
from sweeper import plugin_params as _plugin_params
from sweeper.datafit import check_data_fit, data_summary
from sweeper.gridfile import base_config, check_sections, parse_grid_file, raw_value, read_grid_yaml
from sweeper.gridspec import (
    NAME_PATTERN,
    NAME_RULE,
    Grid,
    GridFile,
    Resources,
    TrialSpec,
    Tracking,
    name_problem,
)
from sweeper.resources import bundles, check_resources, trial_rows

__all__ = [
    "MAX_TRIALS", "NAME_PATTERN", "NAME_RULE", "Grid", "GridFile", "Resources", "Tracking",
    "TrialSpec", "bundles", "data_summary", "load_grid", "name_problem", "raw_value",
    "trial_rows",
]

#: more trials than this are refused unless `allow_large` (`--allow-large`). Read when
#: `load_grid` runs, so lowering it here (tests do) lowers it for the whole check.
MAX_TRIALS = 10_000


def load_grid(path: str | Path, allow_large: bool = False) -> Grid:
    """Read, validate and expand a grid file. Touches nothing but the file itself.

    The number of trials (product of the axis lengths × seeds) is computed before the
    expansion and refused above MAX_TRIALS unless `allow_large` (`--allow-large`).

    Raises:
        GridError: anything wrong with the file, naming the file, the key and what is
            allowed.
    """
    file = str(path)
    raw, text = read_grid_yaml(Path(path))
    spec = parse_grid_file(file, raw)
    seeds = _expand.seed_list(file, spec, MAX_TRIALS, allow_large)
    check_sections(file, spec, seeds)
    _plugin_params.check_section(file, spec.plugin_params)
    base = base_config(file, spec)
    if spec.warmup is not None:
        _expand.check_warmup(file, spec.warmup, base, spec.grid)
    axes = _expand.axes_of(spec, seeds)
    _expand.check_size(file, axes, MAX_TRIALS, allow_large)

    def fits(cfg: SimulationConfig, overrides: dict[str, Any]) -> None:
        check_data_fit(file, cfg, overrides)
        check_resources(file, cfg, spec.resources)

    trials, warmups = _expand.expand(file, spec, base, axes, fits)
    return Grid(file, spec, tuple(trials), tuple(k for k, _ in axes), text, warmups)
