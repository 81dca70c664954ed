"""Reading configs from YAML and `--set key=value` overrides (YAML stays out of fl_core).

Files are read by `sweeper.yamlio` (the same bounded reader as grid files); unsafe tags
(`!!python/...`) and duplicate keys are refused with a clear error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import yaml

from fl_core.config import SimulationConfig, parse_config, set_dotted
from fl_core.errors import ConfigError
from sweeper import yamlio
from sweeper.errors import GridError


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file with the sweeper's one bounded reader (sweeper.yamlio: duplicate
    keys, unsafe tags, deep nesting, alias bombs and non-UTF-8 files refused); any problem
    becomes a GridError naming the file."""
    return yamlio.read_yaml(path)[0]


def parse_override(item: str) -> tuple[str, Any]:
    """`a.b=value` → ("a.b", YAML-typed value): `3` is an int, `null` None, `x` a string."""
    if "=" not in item:
        raise ConfigError(item, item, "KEY=VALUE with a dotted key, e.g. attack.fraction=0.033", "--set")
    key, _, value = item.partition("=")
    try:
        return key.strip(), yaml.load(value, Loader=yamlio.BoundedLoader)  # noqa: S506 (safe)
    except (yaml.YAMLError, RecursionError):
        return key.strip(), value


def load_config(path: str | Path | None, overrides: Iterable[str] = ()) -> SimulationConfig:
    """The config file (if any) with overrides applied, validated."""
    raw: dict = {}
    source = str(path) if path else "--set"
    if path is not None:
        raw = read_yaml(path) or {}
        if not isinstance(raw, dict):
            raise GridError(str(path), "<root>", "a mapping of config keys (seed, data, fl, attack, defense)")
    for item in overrides:
        key, value = parse_override(item)
        set_dotted(raw, key, value)
    try:
        return parse_config(raw, source=source)
    except ConfigError as e:  # the offending value may be huge: show a capped repr
        raise ConfigError(e.path, yamlio.capped(e.value), e.allowed, e.source) from None


def dump_config(config: SimulationConfig) -> str:
    """The fully resolved config as YAML (what `config.yaml` holds)."""
    return yaml.safe_dump(json.loads(config.model_dump_json()), sort_keys=False)
