"""Building components: name → built plug-in, the one place that does it. Attacks
(`fl_core/attacks/`), aggregators (`fl_core/aggregators/`), defenses (`fl_core/defenses/`)
and backdoor tasks (`fl_core/backdoors/`) register themselves, one module each, found by
import (`fl_core.plugins`); every spec's `build` takes (its params, the config, ...) in that
order. Nothing else branches on names."""

from __future__ import annotations

from fl_core.aggregators import AGGREGATORS
from fl_core.attacks import ATTACKS
from fl_core.backdoors import build_task, select_backdoor  # noqa: F401  (the backdoor task's)
from fl_core.config import SimulationConfig
from fl_core.defenses import make_defenses  # noqa: F401  (built here with the other plug-ins)
from fl_core.errors import UnknownComponentError


def _built(registry, kind: str, name: str, params: dict, config: SimulationConfig):
    """The registered plug-in `name`, built from its (validated) params and the config."""
    try:
        spec = registry[name]
    except KeyError:
        raise UnknownComponentError(kind, name, registry) from None
    return spec.build(spec.params(**params), config)


def make_attack(config: SimulationConfig):
    """The configured attack (None for `none`), built from its registered spec."""
    return _built(ATTACKS, "attack", config.attack.kind, config.attack.params, config)


def make_aggregator(config: SimulationConfig):
    """The config's `defense.aggregator`, built with its (validated) `aggregator_params`."""
    return _built(AGGREGATORS, "aggregator", config.defense.aggregator, config.defense.aggregator_params, config)
