"""Server-side aggregators (`defense.aggregator`), one module each; importing this package
imports every module in it, and each registers its name (see `base.register`)."""

from __future__ import annotations

from fl_core.aggregators.base import AGGREGATORS, AggregatorSpec
from fl_core.plugins import import_all

import_all(__name__, __path__)

__all__ = ["AGGREGATORS", "AggregatorSpec"]
