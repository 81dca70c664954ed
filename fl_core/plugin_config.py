"""The plug-in families' part of config validation, installed into the schema.

`fl_core.config` is a plain schema that imports no plug-in; the registries import it (their
specs are typed by it). This module imports both and registers the hooks the schema calls
(`fl_core.config.PluginHooks`): `attack.kind` + `attack.params`, `attack.backdoor` +
`attack.backdoor_params`, `defense.aggregator` + `defense.aggregator_params`,
`defense.preaggregation` + `defense.preaggregation_params`, each checked by
the plug-in's own params model with a did-you-mean, and the plug-ins' cross-field checks. The
`fl_core` package imports it, so the hooks are in place before any config is parsed.

It also maps the old flat attack shape (`attack.pgd_iterations`, `attack.recipe`,
`attack.poison_fraction`, before the attacks owned them) onto the new one, with a one-line
`DeprecatedConfigWarning`: a key the attack takes moves into `attack.params`; one it ignores
stays where it was (if not at its old default) so that the config keeps its trial key.
"""

from __future__ import annotations

import difflib
import warnings
from typing import Any, Mapping

from fl_core.attacks import ATTACKS
from fl_core.attacks.base import PGDParams
from fl_core.backdoors import BACKDOORS, DEFAULT_BACKDOOR
from fl_core.backends import AUTO, BACKENDS
from fl_core.data import SOURCES
from fl_core.config import (
    DEFAULT_AGGREGATOR,
    LEGACY_ATTACK_KEYS,
    PREAGGREGATION_PARAMS_PREFIX,
    PREAGGREGATION_SEPARATOR,
    DeprecatedConfigWarning,
    PluginHooks,
    SimulationConfig,
    register_plugin_hooks,
)
from fl_core.errors import ConfigError, UnknownKeyError
from fl_core.plugins import validate_params


def _named_as_written(e: ConfigError, legacy: set[str]) -> ConfigError:
    """An error on `attack.params.<k>` for a key the config wrote as `attack.<k>` names it so."""
    for key in legacy:
        if e.path == f"attack.params.{key}":
            return type(e)(f"attack.{key}", e.value, e.allowed, e.source)
    return e


def resolve_attack(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The raw `attack` section with its plug-ins resolved (see `PluginHooks.attack`)."""
    out = dict(raw)
    kind = out.get("kind", "none")
    spec = ATTACKS.spec_for(kind)
    fields = spec.params.model_fields
    params = out.get("params")
    moved: dict[str, Any] = {}
    kept: dict[str, Any] = {}
    for key in LEGACY_ATTACK_KEYS:
        value = out.pop(key, None)
        if value is None:
            continue
        if key in fields:
            if isinstance(params, Mapping) and key in params and params[key] != value:
                raise ConfigError(f"attack.{key}", value,
                                  f"only one of attack.{key} (deprecated) and attack.params.{key} "
                                  f"(= {params[key]!r}), or the same value")
            moved[key] = value
        else:
            kept[key] = value
    if moved or kept:
        where = ", ".join(f"attack.{k}" for k in (*moved, *kept))
        note = (f"moved into attack.params of {kind}" if moved else "") + (
            "; " if moved and kept else "") + (
            f"{', '.join(f'attack.{k}' for k in kept)} not taken by {kind}, kept for the trial key" if kept else "")
        warnings.warn(DeprecatedConfigWarning(f"deprecated flat attack keys {where}: {note}"), stacklevel=2)
    if moved:
        params = {**(params if isinstance(params, Mapping) else {}), **moved}
    try:
        out["params"] = validate_params("attack.params", kind, spec.params, params)
        checked = validate_params("attack", "the deprecated flat attack keys", PGDParams, kept)
    except ConfigError as e:
        raise _named_as_written(e, {*moved, *kept}) from None
    for key in kept:  # a value equal to the old default hashes as if absent
        if checked[key] != LEGACY_ATTACK_KEYS[key]:
            out[key] = checked[key]
    backdoor = out.get("backdoor")
    if backdoor is None:  # resolved here, so that "the attack's own" hashes as its name
        backdoor = spec.backdoor or DEFAULT_BACKDOOR
    out["backdoor"] = backdoor
    out["backdoor_params"] = validate_params("attack.backdoor_params", str(backdoor),
                                             BACKDOORS.spec_for(backdoor).params, out.get("backdoor_params"))
    return out


def _aggregators():
    from fl_core.aggregators import AGGREGATORS  # torch: only for a config naming another aggregator

    return AGGREGATORS


def _preaggregators():
    from fl_core.preaggregators import PREAGGREGATORS  # torch-free, but only read when named

    return PREAGGREGATORS


def _step_names(value: Any) -> tuple[str, ...]:
    """`defense.preaggregation` as written (null or `none`, a '+'-joined string, or a list
    of names) → the step names in the order they run."""
    if value is None or value == "none":
        return ()
    if isinstance(value, str):
        names = tuple(part.strip() for part in value.split(PREAGGREGATION_SEPARATOR))
    elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        names = tuple(v.strip() for v in value)
    else:
        names = ("",)
    if any(not n for n in names):
        raise ConfigError("defense.preaggregation", value,
                          f"step names joined by '{PREAGGREGATION_SEPARATOR}' in the order they run "
                          f"(e.g. nnm{PREAGGREGATION_SEPARATOR}bucketing), a list of names, or null "
                          f"for none; steps: {', '.join(sorted(_preaggregators()))}")
    return names


def resolve_preaggregation(raw: Mapping[str, Any]) -> Mapping[str, Any]:
    """The raw `defense` section with `preaggregation` in its canonical '+'-joined form (null
    when empty) and `preaggregation_params` holding every named step's params, validated by
    its model with the defaults filled in (so equal settings hash equally)."""
    if "preaggregation" not in raw and "preaggregation_params" not in raw:
        return raw  # the default: parsing a config without it imports nothing
    names = _step_names(raw.get("preaggregation"))
    params = raw.get("preaggregation_params")
    params = {} if params is None else params
    registry = _preaggregators()
    for name in names:
        registry.spec_for(name)  # a did-you-mean on defense.preaggregation
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError("defense.preaggregation", raw.get("preaggregation"),
                          f"each step at most once ({', '.join(twice)} is named twice)")
    if not isinstance(params, Mapping):
        raise ConfigError("defense.preaggregation_params", params,
                          "a mapping of step name → its parameters, for steps named in defense.preaggregation")
    for key in params:
        if key not in names:
            near = difflib.get_close_matches(str(key), list(names), n=1, cutoff=0.5)
            hint = f"did you mean `{near[0]}`? " if near else ""
            raise UnknownKeyError(f"{PREAGGREGATION_PARAMS_PREFIX}{key}", params[key],
                                  f"{hint}parameters of a step named in defense.preaggregation "
                                  f"({', '.join(names) if names else 'none is named'})")
    resolved = {n: validate_params(f"{PREAGGREGATION_PARAMS_PREFIX}{n}", n, registry[n].params, params.get(n))
                for n in names}
    return {**raw, "preaggregation": PREAGGREGATION_SEPARATOR.join(names) or None,
            "preaggregation_params": resolved}


def resolve_defense(raw: Mapping[str, Any]) -> Mapping[str, Any]:
    """The raw `defense` section with `aggregator_params` validated by the aggregator's model
    and the pre-aggregation steps resolved (`resolve_preaggregation`)."""
    raw = resolve_preaggregation(raw)
    name = raw.get("aggregator", DEFAULT_AGGREGATOR)
    params = raw.get("aggregator_params")
    if name == DEFAULT_AGGREGATOR and not params:
        return raw  # fedavg takes no parameters: parsing a plain config stays torch-free
    spec = _aggregators().spec_for(name)
    return {**raw, "aggregator_params": validate_params("defense.aggregator_params", name, spec.params, params)}


def check_attack(config: SimulationConfig) -> None:
    a, d = config.attack, config.defense
    spec = ATTACKS[a.kind]
    if d.norm_bound is None and spec.needs_bound:
        raise ConfigError(
            "defense.norm_bound", None, f"a positive number M when attack.kind = {a.kind} "
            "(the attacker projects onto M/β)"
        )
    if spec.backdoor is not None and a.backdoor != spec.backdoor:
        raise ConfigError("attack.backdoor", a.backdoor, f"{spec.backdoor} (or null) when attack.kind = {a.kind}")
    if spec.check is not None:
        spec.check(spec.params(**a.params), config)


def check_preaggregation(config: SimulationConfig) -> int:
    """Each pre-aggregation step's params against the rows it receives (the cohort, or what
    the step before left); returns the number of rows the aggregator will see."""
    d = config.defense
    rows = config.fl.clients_per_round
    mixed = []
    for name in d.preaggregation_steps:
        spec = _preaggregators()[name]
        params = spec.params(**d.preaggregation_params.get(name, {}))
        if spec.check is not None:
            spec.check(params, rows, config)
        rows = spec.rows_out(params, rows)
        if not spec.keeps_rows:
            mixed.append(name)
    if mixed and d.aggregator != DEFAULT_AGGREGATOR and _aggregators()[d.aggregator].per_client:
        raise ConfigError("defense.preaggregation", d.preaggregation,
                          f"no step that mixes clients into shared rows ({', '.join(mixed)}) with "
                          f"defense.aggregator = {d.aggregator}, which keeps a history per client")
    return rows


def check_defense(config: SimulationConfig) -> None:
    d = config.defense
    rows = check_preaggregation(config) if d.preaggregation_steps else config.fl.clients_per_round
    if d.aggregator != DEFAULT_AGGREGATOR:
        spec = _aggregators()[d.aggregator]
        if spec.check is not None:
            params = spec.params(**d.aggregator_params)
            if rows == config.fl.clients_per_round:
                spec.check(params, config)
                return
            # the aggregator sees the rows the steps leave: hold it to them, and say so
            fewer = config.model_copy(update={"fl": config.fl.model_copy(update={"clients_per_round": rows})})
            try:
                spec.check(params, fewer)
            except ConfigError as e:
                raise type(e)(e.path, e.value, f"{e.allowed}; here the aggregator sees {rows} rows, what "
                              f"defense.preaggregation = {d.preaggregation} leaves of fl.clients_per_round = "
                              f"{config.fl.clients_per_round}", e.source) from None


def check_source(name: str) -> None:
    SOURCES.spec_for(name)


def check_backend(name: str) -> None:
    if name != AUTO and name not in BACKENDS:
        names = sorted([AUTO, *BACKENDS])
        near = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
        hint = f"did you mean `{near[0]}`? " if near else ""
        raise ConfigError("fl.backend", name, f"{hint}one of: {', '.join(names)} (auto: the fastest for the device)")


def check_data(config: SimulationConfig) -> None:
    d = config.data
    if SOURCES[d.source].needs_path and not d.path:
        raise ConfigError("data.path", None, f"a directory when data.source = {d.source}")


def plugin_keys() -> set[str]:
    keys = {f"defense.aggregator_params.{k}" for s in _aggregators().values() for k in s.params.model_fields}
    keys |= {f"attack.params.{k}" for s in ATTACKS.values() for k in s.params.model_fields}
    keys |= {f"attack.backdoor_params.{k}" for s in BACKDOORS.values() for k in s.params.model_fields}
    keys |= {f"{PREAGGREGATION_PARAMS_PREFIX}{n}.{k}"
             for n, s in _preaggregators().items() for k in s.params.model_fields}
    return keys


register_plugin_hooks(PluginHooks(resolve_attack, resolve_defense, check_source, check_backend, check_attack,
                                  check_defense, check_data, plugin_keys))
