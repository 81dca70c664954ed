"""The pre-aggregation protocol: steps that turn the round's stacked updates into the rows
the aggregator sees, whatever the aggregator (`defense.preaggregation`).

A step gets the round's [n, d] float32 update matrix after the per-client defenses
(clipping), in (client_index, slot) order, with the rows' FedAvg weights ([n] float64 on
CPU), and returns [m, d] rows with their [m] weights: Bucketing (Karimireddy et al. 2022)
averages random buckets (m = ⌈n/s⌉), NNM (Allouah et al. 2023) replaces each row by the mean
of its nearest neighbours (m = n). The configured steps run in the listed order and then the
aggregator (`fl_core.preaggregators.compose`). Each module registers a spec with a frozen
params model (`defense.preaggregation_params.<name>`) and says how many rows it leaves and
whether row i is still client i's (`keeps_rows`): after a step that mixes clients into shared
rows, a selecting aggregator's choice is not scored against the clients' roles.

This module and the step modules import torch only inside `apply`: the config validation
that reads the registry stays torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Protocol

from fl_core.config import PREAGGREGATION_PARAMS_PREFIX, PREAGGREGATION_SEPARATOR
from fl_core.plugins import Params, Registry

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class PreaggContext:
    """Read-only facts about the round, for a step's named random stream.

    Attributes:
        seed: the config seed (`fl_core.rng`).
        round_idx: 0-based round.
        position: the step's 0-based place in `defense.preaggregation` (two steps that
            draw never share a stream).
    """

    seed: int
    round_idx: int
    position: int


class Preaggregator(Protocol):
    def apply(
        self, updates: "torch.Tensor", weights: "torch.Tensor", ctx: PreaggContext
    ) -> tuple["torch.Tensor", "torch.Tensor", dict]:
        """[n, d] float32 updates and their [n] float64 FedAvg weights (CPU) → [m, d]
        float32 rows on the same device, their [m] float64 weights and scalar metrics.
        Never in place."""
        ...


@dataclass(frozen=True)
class PreaggregatorSpec:
    """A registered pre-aggregation step.

    Attributes:
        name: its name in `defense.preaggregation`.
        params: its parameter model (`defense.preaggregation_params.<name>`).
        build: (params, config) → Preaggregator.
        label: params → the text a report prints (e.g. "bucketing s=2").
        rows_out: (params, n) → how many rows the step leaves of n (the config check holds
            the next step and the aggregator to it).
        keeps_rows: row i of the output is still client i's (NNM: a mix centred on it);
            False when rows are shared by several clients (Bucketing).
        check: (params, n, config) → None, raising ConfigError for params that do not fit
            the n rows the step receives (e.g. NNM's f ≥ n/2); run at config validation.
    """

    name: str
    params: type[Params]
    build: Callable[..., Preaggregator]
    label: Callable[[Params], str]
    rows_out: Callable[[Params, int], int]
    keeps_rows: bool
    check: Callable[..., None] | None = None


PREAGGREGATORS: Registry[PreaggregatorSpec] = Registry("pre-aggregation step", "defense.preaggregation")
register = PREAGGREGATORS.register


def params_key(name: str) -> str:
    """The config key of step `name`'s parameters."""
    return f"{PREAGGREGATION_PARAMS_PREFIX}{name}"




def pipeline_label(steps: str | None, params: "dict[str, dict] | None" = None) -> str:
    """A report's text for `defense.preaggregation` with its params, e.g. "NNM f=2 → bucketing
    s=2" ("" when there are no steps). A name or params this engine does not know print as
    given (a run from another version)."""
    if not steps:
        return ""
    parts = []
    for name in str(steps).split(PREAGGREGATION_SEPARATOR):
        spec = PREAGGREGATORS.get(name)
        try:
            parts.append(spec.label(spec.params.model_validate((params or {}).get(name) or {}, strict=False))
                         if spec else name)
        except ValueError:  # pydantic's ValidationError
            parts.append(name)
    return " → ".join(parts)
