"""Reading a grid file and checking it section by section, before any trial is expanded.

Every problem becomes one `GridError` naming the file, the key (`base.<key>`,
`grid.<key>`, `resources.workers`, ...) and what is allowed, with a did-you-mean for a
misspelt key: pydantic's errors are translated here, not shown raw. (The YAML itself is
read by `sweeper.yamlio`, which bounds its size and depth.)
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from fl_core.config import SimulationConfig, all_keys, is_plugin_param, parse_config, set_dotted
from fl_core.errors import ConfigError, UnknownKeyError
from sweeper import plugin_params, yamlio
from sweeper.errors import GridError
from sweeper.gridspec import GridFile, name_problem
from sweeper.yamlio import short

# -- the file and its schema ---------------------------------------------------------------


def read_grid_yaml(path: Path) -> tuple[dict[str, Any], str]:
    """The file's top-level mapping and its text (kept: the sweep stores it as grid.yaml)."""
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


def parse_grid_file(file: str, raw: dict[str, Any]) -> GridFile:
    """`raw` checked against the schema, its sweep name included."""
    try:
        spec = GridFile.model_validate(raw)
    except ValidationError as e:
        raise _grid_file_error(file, e) from None
    problem = name_problem(spec.name)
    if problem:
        raise GridError(file, "name", problem)
    return spec


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


# -- the sections against each other and against the config schema ------------------------


def check_sections(file: str, spec: GridFile, seeds: list[int] | None) -> None:
    """The grid is not empty, its keys are config keys with valid values, and no two
    sections set the same thing (`grid.seed` and `seeds`, `resources.workers` and
    `grid.fl.workers`)."""
    grid = spec.grid
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


def base_config(file: str, spec: GridFile) -> dict[str, Any]:
    """The raw base config every trial starts from (`resources.workers` written into
    fl.workers), checked on its own so that its errors point at `base.<key>`, not at a
    trial, except for cross-field rules that a grid axis may complete."""
    base = copy.deepcopy(spec.base)
    if spec.resources.workers is not None:
        set_dotted(base, "fl.workers", spec.resources.workers)
    try:
        parse_config(base, source=file)
    except ConfigError as e:
        if isinstance(e, UnknownKeyError):  # a misspelt key (or a plug-in's parameter name)
            raise GridError(file, f"base.{e.path}", f"unknown key; {e.allowed}"
                            + plugin_params.hint(e.path, spec.grid)) from None
        # A value error in the base is reported now only if it is not a cross-field rule
        # that a grid axis could satisfy (e.g. `attack.fraction` swept for an attack kind).
        if not _is_cross_field(e):
            raise GridError(
                file, f"base.{e.path}", f"invalid value {short(e.value)}; allowed: {e.allowed}"
            ) from None
    return base


def _is_cross_field(e: ConfigError) -> bool:
    return e.value is None or " when " in e.allowed or "other than" in e.allowed
