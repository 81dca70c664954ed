"""Attack plug-ins (`attack.kind`), one module each; importing this package imports every
module in it, and each registers its name (see `base.register`). Torch-free at import."""

from __future__ import annotations

import importlib
import pkgutil
from types import MappingProxyType

from fl_core.attacks.base import _REGISTRY, AttackSpec

_NOT_ATTACKS = ("base", "recipes")
for _mod in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _mod not in _NOT_ATTACKS:
        importlib.import_module(f"{__name__}.{_mod}")

ATTACKS: MappingProxyType[str, AttackSpec] = MappingProxyType(_REGISTRY)
