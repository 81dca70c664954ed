"""Name → factory for the plug-ins. Attacks (`fl_core/attacks/`) and aggregators
(`fl_core/aggregators/`) register themselves, one module each, found by import; the two
defense hooks' map is here. Nothing else branches on names."""

from __future__ import annotations

from types import MappingProxyType
from typing import Callable

from fl_core.aggregators import AGGREGATORS
from fl_core.attacks import ATTACKS
from fl_core.config import SimulationConfig
from fl_core.defenses.norm_clipping import NormClipping
from fl_core.defenses.weak_dp import GaussianNoise
from fl_core.errors import UnknownComponentError

# Each defense: (is it on for this config?, factory). Applied per client in this order and
# to the aggregate in reverse order (pfl's postprocessor convention).
DEFENSES: MappingProxyType[str, tuple[Callable[[SimulationConfig], bool], Callable[[SimulationConfig], object]]] = (
    MappingProxyType(
        {
            "norm-clipping": (
                lambda cfg: cfg.defense.norm_bound is not None,
                lambda cfg: NormClipping(cfg.defense.norm_bound),
            ),
            "weak-dp": (
                lambda cfg: cfg.defense.noise_sigma > 0,
                lambda cfg: GaussianNoise(cfg.defense.noise_sigma, cfg.defense.noise_placement),
            ),
        }
    )
)


def make_attack(config: SimulationConfig):
    """The configured attack (None for `none`), built from its registered spec."""
    try:
        spec = ATTACKS[config.attack.kind]
    except KeyError:
        raise UnknownComponentError("attack", config.attack.kind, ATTACKS) from None
    return spec.build(config, spec.params(**config.attack.params))


def make_defenses(config: SimulationConfig) -> list:
    return [factory(config) for on, factory in DEFENSES.values() if on(config)]


def make_aggregator(config: SimulationConfig):
    """The config's `defense.aggregator`, built with its (validated) `aggregator_params`."""
    try:
        spec = AGGREGATORS[config.defense.aggregator]
    except KeyError:
        raise UnknownComponentError("aggregator", config.defense.aggregator, AGGREGATORS) from None
    return spec.build(spec.params(**config.defense.aggregator_params), config)
