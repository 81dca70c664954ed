"""The Defense protocol: pfl's two hooks. `on_client` runs on each update in list order
(e.g. clipping); `on_aggregate` runs on the aggregate in reverse order (e.g. noise). The
aggregator (`fl_core.aggregators`) runs in between. The round merges the metrics the hooks
return into its own: a per-client metric as its mean over the cohort (so a 0/1 flag
becomes a share), an aggregate metric as it is.

Each defense module registers a `DefenseSpec`: when it is on (the paper's defenses are
switched on by their own keys' values, `defense.norm_bound` and `defense.noise_sigma`, which
grids use), how to build it, and its place in the chain; `fl_core.defenses` imports every
module of the package, so adding a defense takes one file and its tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Protocol

from fl_core.plugins import Registry
from fl_core.types import Delta

if TYPE_CHECKING:
    from fl_core.config import SimulationConfig


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


@dataclass(frozen=True)
class DefenseSpec:
    """A registered defense.

    Attributes:
        name: its name (metrics and messages).
        enabled: config → whether this defense runs.
        build: config → Defense.
        order: its place in the per-client chain (ascending); the aggregate hooks run in the
            reverse order (pfl's postprocessor convention: clip first, noise last).
    """

    name: str
    enabled: Callable[["SimulationConfig"], bool]
    build: Callable[["SimulationConfig"], Defense]
    order: int


DEFENSES: Registry[DefenseSpec] = Registry("defense", "defense")
register = DEFENSES.register
