"""Pre-aggregation steps (`defense.preaggregation`), one module each; importing this package
imports every module in it, and each registers its name (see `base.register`). `compose`
(the steps in order, then the aggregator) is imported by the round, not registered."""

from __future__ import annotations

from fl_core.plugins import import_all
from fl_core.preaggregators.base import PREAGGREGATORS, PreaggregatorSpec

import_all(__name__, __path__, skip=("base", "compose"))

__all__ = ["PREAGGREGATORS", "PreaggregatorSpec"]
