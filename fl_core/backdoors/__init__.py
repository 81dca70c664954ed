"""Backdoor-task plug-ins (`attack.backdoor`), one module each; importing this package
imports every module in it, and each registers its name (see `base.register`). Torch-free
at import."""

from __future__ import annotations

from fl_core.backdoors.base import BACKDOORS, DEFAULT_BACKDOOR, BackdoorSets, BackdoorSpec, EvalSets
from fl_core.plugins import import_all

import_all(__name__, __path__)


def select_backdoor(config, data) -> BackdoorSets:
    """The config's backdoor task's targets and reserved writers (`attack.backdoor`)."""
    return BACKDOORS[config.attack.backdoor].select(config, data)


def build_task(config, data, sets):
    """The config's backdoor task for this process (its D_mal and evaluation sets)."""
    spec = BACKDOORS[config.attack.backdoor]
    return spec.build(spec.params(**config.attack.backdoor_params), config, data, sets)


__all__ = ["BACKDOORS", "DEFAULT_BACKDOOR", "BackdoorSets", "BackdoorSpec", "EvalSets", "build_task",
           "select_backdoor"]
