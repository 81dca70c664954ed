"""The Defense protocol: pfl's two hooks. `on_client` runs on each update in list order
(e.g. clipping); `on_aggregate` runs on the aggregate in reverse order (e.g. noise). The
aggregator (`fl_core.aggregators`) runs in between. The round merges the metrics the hooks
return into its own: a per-client metric as its mean over the cohort (so a 0/1 flag
becomes a share), an aggregate metric as it is."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from fl_core.types import Delta


@dataclass(frozen=True)
class AggregateContext:
    """Read-only facts about the round the server-side hook needs."""

    seed: int
    round_idx: int
    cohort_size: int


class Defense(Protocol):
    def on_client(self, delta: Delta) -> tuple[Delta, dict]:
        """Transform one client's update (never in place); return (update, metrics)."""
        ...

    def on_aggregate(self, mean: Delta, ctx: AggregateContext) -> tuple[Delta, dict]:
        """Transform the aggregated update (never in place); return (update, metrics)."""
        ...
