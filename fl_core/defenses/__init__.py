"""Defense plug-ins (per-client and aggregate hooks), one module each; importing this package
imports every module in it, and each registers itself (see `base.register`)."""

from __future__ import annotations

from fl_core.defenses.base import DEFENSES, DefenseSpec
from fl_core.plugins import import_all

import_all(__name__, __path__)


def make_defenses(config) -> list:
    """The defenses this config turns on, in chain order."""
    return [s.build(config) for s in sorted(DEFENSES.values(), key=lambda s: s.order) if s.enabled(config)]


__all__ = ["DEFENSES", "DefenseSpec", "make_defenses"]
