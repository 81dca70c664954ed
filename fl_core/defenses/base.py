"""The Defense protocol: pfl's two hooks. `on_client` runs on each update in list order
(e.g. clipping); `on_aggregate` runs on the aggregate in reverse order (e.g. noise). The
aggregator (`fl_core.aggregators`) runs in between. The round merges the metrics the hooks
return into its own: a per-client metric as its mean over the cohort (so a 0/1 flag
becomes a share), an aggregate metric as it is.

A defense with state across rounds (adaptive clipping's bound) also has
`begin_round(defense_state) -> Defense`: the round gets a fresh object bound to the state in
force (so the registered, shared object never changes between rounds), and that object's
`end_round() -> dict` gives its part of the next round's `SimulationState.defense_state`
(CPU tensors by name, checkpointed). Stateless defenses have neither; the round uses them as
they are (`begin_round`, `end_round` below).

Each defense module registers a `DefenseSpec`: when it is on (the paper's defenses are
switched on by their own keys' values, `defense.norm_bound` and `defense.noise_sigma`, which
grids use), how to build it, and its place in the chain; `fl_core.defenses` imports every
module of the package, so adding a defense takes one file and its tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Mapping, Protocol, Sequence

from fl_core.plugins import Registry
from fl_core.types import Delta

if TYPE_CHECKING:
    import torch

    from fl_core.config import SimulationConfig


@dataclass(frozen=True)
class AggregateContext:
    """Read-only facts about the round the server-side hook needs. `global_params` (w_t, CPU
    float32) and `server_lr` (η) let a defense that acts on the new global model w_t + η·Δ
    (CRFL) return the update that yields it; None where a caller has no round (unit tests)."""

    seed: int
    round_idx: int
    cohort_size: int
    global_params: "torch.Tensor | None" = None
    server_lr: float = 1.0


class Defense(Protocol):
    def on_client(self, delta: Delta) -> tuple[Delta, dict]:
        """Transform one client's update (never in place); return (update, metrics)."""
        ...

    def on_aggregate(self, mean: Delta, ctx: AggregateContext) -> tuple[Delta, dict]:
        """Transform the aggregated update (never in place); return (update, metrics)."""
        ...


class StatefulDefense(Protocol):
    def begin_round(self, defense_state: Mapping[str, "torch.Tensor"]) -> "RoundDefense":
        """The defense of one round, bound to the state in force ({} in round 0)."""
        ...


class RoundDefense(Defense, Protocol):
    def end_round(self) -> dict[str, "torch.Tensor"]:
        """After `on_aggregate`: this defense's entries of the next round's defense_state."""
        ...


def begin_round(defenses: Sequence[Defense], defense_state: Mapping[str, "torch.Tensor"]) -> list[Defense]:
    """The round's defenses: each stateful one bound to `defense_state`, the others as they are."""
    return [d.begin_round(defense_state) if hasattr(d, "begin_round") else d for d in defenses]


def end_round(defenses: Sequence[Defense]) -> dict[str, "torch.Tensor"]:
    """The next round's defense_state: the union of the round defenses' `end_round()`."""
    out: dict = {}
    for d in defenses:
        if hasattr(d, "end_round"):
            new = d.end_round()
            assert not set(out) & set(new), f"defense state keys reported twice: {sorted(set(out) & set(new))}"
            out.update(new)
    return out


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
