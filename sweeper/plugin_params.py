"""The grid section `plugin_params`: each plug-in's own settings, given once and applied to
a trial only when that trial chooses the plug-in.

Why: a grid that varies `defense.aggregator` over [fedavg, fldetector, deepsight] cannot
put FLDetector's `start_round` in `base.defense.aggregator_params` (fedavg takes no
parameters, so every fedavg trial would be refused), and a grid axis
`defense.aggregator_params.start_round` would multiply every aggregator by it. So::

    grid:
      attack.kind: [pgd, a3fl]
      defense.aggregator: [fedavg, fldetector, deepsight]
    plugin_params:
      attack:      {a3fl: {trigger_epochs: 20, adv_every: 5}}
      aggregator:  {fldetector: {start_round: 30}, deepsight: {num_samples: 200}}

gives each a3fl trial `attack.params: {trigger_epochs: 20, adv_every: 5}` and each
fldetector trial `defense.aggregator_params: {start_round: 30}`; the pgd and fedavg trials
get nothing. A parameter the trial sets itself (in `base` or as a grid axis such as
`attack.params.trigger_epochs`) wins over the section's. The section's values are validated
by the trials that use them: a bad one is reported as `plugin_params.<family>.<name>.<p>`.
A plug-in named here that is not registered, or that no trial of the grid chooses, is an
error (a typo would otherwise silently leave the defaults in place).
"""

from __future__ import annotations

import difflib
from typing import Any, Mapping

from fl_core.config import DEFAULT_AGGREGATOR, set_dotted
from sweeper.errors import GridError

#: family → (the key naming the chosen plug-in, the key of its own parameters, what it is)
FAMILIES: Mapping[str, tuple[str, str, str]] = {
    "attack": ("attack.kind", "attack.params", "attack"),
    "backdoor": ("attack.backdoor", "attack.backdoor_params", "backdoor task"),
    "aggregator": ("defense.aggregator", "defense.aggregator_params", "aggregator"),
    "preaggregation": ("defense.preaggregation", "defense.preaggregation_params",
                       "pre-aggregation step"),
}


def get_dotted(raw: Mapping[str, Any], key: str) -> Any:
    """`raw[a][b][c]` for `a.b.c`; None where a level is missing or not a mapping."""
    node: Any = raw
    for p in key.split("."):
        if not isinstance(node, Mapping):
            return None
        node = node.get(p)
    return node


def _registry(family: str):
    if family == "attack":
        from fl_core.attacks import ATTACKS
        return ATTACKS
    if family == "backdoor":
        from fl_core.backdoors import BACKDOORS
        return BACKDOORS
    if family == "aggregator":
        from fl_core.aggregators import AGGREGATORS
        return AGGREGATORS
    from fl_core.preaggregators import PREAGGREGATORS
    return PREAGGREGATORS


def check_section(file: str, section: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> None:
    """Every family is known and every plug-in it names is registered."""
    for family, by_name in section.items():
        if family not in FAMILIES:
            near = difflib.get_close_matches(family, list(FAMILIES), n=1, cutoff=0.6)
            hint = f"did you mean `{near[0]}`? " if near else ""
            raise GridError(file, f"plugin_params.{family}",
                            f"unknown plug-in family; {hint}allowed: {', '.join(FAMILIES)}")
        registry = _registry(family)
        for name in by_name:
            if name not in registry:
                near = difflib.get_close_matches(name, list(registry), n=1, cutoff=0.5)
                hint = f"did you mean `{near[0]}`? " if near else ""
                raise GridError(file, f"plugin_params.{family}.{name}",
                                f"no {FAMILIES[family][2]} of that name; {hint}"
                                f"allowed: {', '.join(sorted(registry))}")


def chosen(family: str, raw: Mapping[str, Any]) -> tuple[str, ...]:
    """The plug-ins of `family` that the raw trial config `raw` chooses (its defaults when
    it names none: no attack, FedAvg, the attack's own backdoor task, no pre-aggregation)."""
    value = get_dotted(raw, FAMILIES[family][0])
    if family == "attack":
        return (str(value if value is not None else "none"),)
    if family == "aggregator":
        return (str(value if value is not None else DEFAULT_AGGREGATOR),)
    if family == "backdoor":
        if value is not None:
            return (str(value),)
        from fl_core.attacks import ATTACKS
        from fl_core.backdoors import DEFAULT_BACKDOOR
        kind = get_dotted(raw, "attack.kind") or "none"
        spec = ATTACKS.get(str(kind))
        return ((spec.backdoor if spec is not None and spec.backdoor else DEFAULT_BACKDOOR),)
    if value is None or value == "none":
        return ()
    if isinstance(value, str):
        return tuple(p.strip() for p in value.split("+"))
    if isinstance(value, list):
        return tuple(str(v).strip() for v in value)
    return ()  # a malformed value: the trial's own check reports it


def apply(section: Mapping[str, Mapping[str, Mapping[str, Any]]], raw: dict[str, Any]
          ) -> dict[str, str]:
    """Fill the trial config `raw` (in place) with the section's params of the plug-ins it
    chooses, under its own. Returns each filled dotted key → where it came from
    (`plugin_params.<family>.<name>.<p>`), so that an error on it names the section."""
    origin: dict[str, str] = {}
    for family, by_name in section.items():
        params_key = FAMILIES[family][1]
        for name in chosen(family, raw):
            given = by_name.get(name)
            if not given:
                continue
            if family == "preaggregation":
                target_key, where = f"{params_key}.{name}", f"plugin_params.{family}.{name}"
            else:
                target_key, where = params_key, f"plugin_params.{family}.{name}"
            own = get_dotted(raw, target_key)
            own = dict(own) if isinstance(own, Mapping) else {}
            for p in given:
                if p not in own:
                    origin[f"{target_key}.{p}"] = f"{where}.{p}"
            set_dotted(raw, target_key, {**given, **own})
    return origin


def hint(key: str, grid: Mapping[str, Any]) -> str:
    """For an error on `key` (a plug-in parameter set in `base`) in a grid that varies that
    plug-in: where such a setting belongs instead."""
    for family, (choose, params, _) in FAMILIES.items():
        if key.startswith(f"{params}.") and choose in grid:
            return (f" (the grid varies {choose}: give one plug-in's settings in "
                    f"`plugin_params.{family}.<name>`, applied only where it is chosen)")
    return ""


def check_used(file: str, section: Mapping[str, Mapping[str, Mapping[str, Any]]],
               seen: Mapping[str, set[str]]) -> None:
    """Every plug-in the section names is chosen by some trial (`seen`: family → names)."""
    for family, by_name in section.items():
        for name in by_name:
            if name not in seen.get(family, set()):
                raise GridError(file, f"plugin_params.{family}.{name}",
                                f"no trial of the grid uses the {FAMILIES[family][2]} {name!r} "
                                f"(it takes settings only from here when a trial chooses it); "
                                f"allowed: the {FAMILIES[family][2]}s the grid chooses: "
                                f"{', '.join(sorted(seen.get(family, set()))) or 'none'}")
