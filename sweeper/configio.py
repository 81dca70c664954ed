"""Reading configs from YAML and `--set key=value` overrides (YAML stays out of fl_core).

Only `yaml.safe_load` is used: unsafe tags (`!!python/...`) are refused with a clear error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import yaml

from fl_core.config import SimulationConfig, parse_config, set_dotted
from fl_core.errors import ConfigError
from sweeper.errors import GridError


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file safely; any problem becomes a GridError naming the file."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise GridError(str(p), "<file>", f"cannot read: {e.strerror or e}") from None
    try:
        return yaml.safe_load(text)
    except yaml.constructor.ConstructorError as e:
        raise GridError(
            str(p), "<yaml>", f"unsafe or unknown YAML tag ({e.problem}); only plain YAML is allowed"
        ) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise GridError(str(p), "<yaml>", f"unreadable YAML{where}: {getattr(e, 'problem', e)}") from None


def parse_override(item: str) -> tuple[str, Any]:
    """`a.b=value` → ("a.b", YAML-typed value): `3` is an int, `null` None, `x` a string."""
    if "=" not in item:
        raise ConfigError(item, item, "KEY=VALUE with a dotted key, e.g. attack.fraction=0.033", "--set")
    key, _, value = item.partition("=")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError:
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
    return parse_config(raw, source=source)


def dump_config(config: SimulationConfig) -> str:
    """The fully resolved config as YAML (what `config.yaml` holds)."""
    return yaml.safe_dump(json.loads(config.model_dump_json()), sort_keys=False)
