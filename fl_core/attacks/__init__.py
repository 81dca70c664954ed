"""Attack plug-ins (`attack.kind`), one module each; importing this package imports every
module in it, and each registers its name (see `base.register`). Torch-free at import."""

from __future__ import annotations

from fl_core.attacks.base import ATTACKS, AttackSpec
from fl_core.plugins import import_all

import_all(__name__, __path__, skip=("base", "recipes"))

__all__ = ["ATTACKS", "AttackSpec"]
