"""Server-side aggregators (`defense.aggregator`), one module each; importing this package
imports every module in it, and each registers its name (see `base.register`)."""

from __future__ import annotations

import importlib
import pkgutil
from types import MappingProxyType

from fl_core.aggregators.base import _REGISTRY, AggregatorSpec

for _mod in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _mod != "base":
        importlib.import_module(f"{__name__}.{_mod}")

AGGREGATORS: MappingProxyType[str, AggregatorSpec] = MappingProxyType(_REGISTRY)
