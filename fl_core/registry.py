"""Read-only name → factory maps for the plug-ins. Adding an attack or defense takes one
module, one line here and one golden test; an aggregator registers itself
(`fl_core.aggregators`), so it takes one module and its tests. Nothing else branches on names."""

from __future__ import annotations

from types import MappingProxyType
from typing import Callable

from fl_core.attacks.model_replacement import ModelReplacement
from fl_core.attacks.pgd import NormBoundedPGD
from fl_core.aggregators import AGGREGATORS
from fl_core.attacks.recipes import RECIPES
from fl_core.config import SimulationConfig
from fl_core.defenses.norm_clipping import NormClipping
from fl_core.defenses.weak_dp import GaussianNoise
from fl_core.errors import UnknownComponentError

ATTACKS: MappingProxyType[str, Callable[[SimulationConfig], object]] = MappingProxyType(
    {
        # kind "none" has no attackers, so its factory is never called to craft.
        "none": lambda cfg: None,
        "model-replacement": lambda cfg: ModelReplacement(RECIPES[cfg.attack.recipe](cfg)),
        "pgd": lambda cfg: NormBoundedPGD(cfg.attack.pgd_iterations, RECIPES[cfg.attack.recipe](cfg)),
    }
)

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
    try:
        return ATTACKS[config.attack.kind](config)
    except KeyError:
        raise UnknownComponentError("attack", config.attack.kind, ATTACKS) from None


def make_defenses(config: SimulationConfig) -> list:
    return [factory(config) for on, factory in DEFENSES.values() if on(config)]


def make_aggregator(config: SimulationConfig):
    """The config's `defense.aggregator`, built with its (validated) `aggregator_params`."""
    try:
        spec = AGGREGATORS[config.defense.aggregator]
    except KeyError:
        raise UnknownComponentError("aggregator", config.defense.aggregator, AGGREGATORS) from None
    return spec.build(spec.params(**config.defense.aggregator_params), config)
