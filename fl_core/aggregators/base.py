"""The Aggregator protocol: how the server turns one round's updates into one update.

An aggregator sees the round's updates stacked in (client_index, slot) order as an [n, d]
float32 matrix on the trial's device, their FedAvg weights (n_k or 1, see
`defense.weighting`), a read-only `AggregatorContext` and its own state from the last round
(e.g. FoolsGold's history). An aggregator that needs no matrix (FedAvg's weighted sum) says
so with `streaming = True` and an `accumulator`: the round then folds each update into it as
it arrives and never holds the cohort's n updates (1,000 clients × 4.8 MB); every other
rule (median, Krum, FLAME, FoolsGold, ...) gets the stacked matrix. It never sees the clients' roles: the round scores what it
selected or flagged against them afterwards (`flag_tpr`/`flag_fpr`). Each aggregator module
registers itself with `register`, with a frozen pydantic model of its parameters
(`defense.aggregator_params`) and the label the report prints; `fl_core.aggregators`
imports every module of the package, so adding one takes one file and its tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch
from fl_core.plugins import Params, Registry
from fl_core.types import Delta


@dataclass(frozen=True)
class AggregatorContext:
    """Read-only facts about the round.

    Attributes:
        seed: the config seed (for named random streams, `fl_core.rng`).
        round_idx: 0-based round.
        cohort_size: n, the number of updates.
        client_indices: the writers' stable indices, aligned with the update rows (a
            writer's identity across rounds, for per-client history; not its role).
        global_params: the round's starting global weights w_t (flat float32, CPU), for a
            rule that trains on them itself (FLTrust's root set); None when the caller
            does not pass them.
    """

    seed: int
    round_idx: int
    cohort_size: int
    client_indices: tuple[int, ...]
    global_params: "torch.Tensor | None" = None


@dataclass(frozen=True)
class Aggregate:
    """What an aggregator returns.

    Attributes:
        delta: the aggregated update, flat float32 (same sign convention as the inputs).
        metrics: scalar diagnostics merged into the round's metrics.
        state: the aggregator's new state (CPU tensors by name; {} when it keeps none).
        accepted: per update row, whether it was selected/admitted; None when the rule
            selects no one (median, trimmed mean, RFA), so no flag rates are computed.
    """

    delta: Delta
    metrics: dict = field(default_factory=dict)
    state: dict = field(default_factory=dict)
    accepted: tuple[bool, ...] | None = None


class Accumulator(Protocol):
    """A streaming aggregator's running state for one round."""

    def add(self, update: torch.Tensor, weight: float) -> None:
        """Fold in the next update (flat float32, after the per-client defenses) with its
        FedAvg weight; updates come in (client_index, slot) order, one at a time."""
        ...

    def result(self) -> "Aggregate":
        """The round's aggregate once every update was added."""
        ...


class Aggregator(Protocol):
    #: True: `accumulator` exists and the round streams the updates into it, giving the
    #: same bits as `aggregate` on the stacked matrix. Aggregators without the attribute
    #: are matrix rules (`needs_matrix`).
    streaming: bool

    def aggregate(
        self, updates: torch.Tensor, weights: torch.Tensor, ctx: AggregatorContext, state: dict
    ) -> Aggregate:
        """Aggregate `updates` [n, d] float32 with FedAvg `weights` [n] float64 on CPU (never in
        place); `state` is what this aggregator returned last round ({} in round 0)."""
        ...

    def accumulator(self, ctx: AggregatorContext, state: dict, device: torch.device | str) -> Accumulator:
        """Streaming aggregators only: a fresh accumulator for one round, working on `device`."""
        ...


def needs_matrix(aggregator: object) -> bool:
    """Whether the round must stack the cohort's updates for `aggregator`: every rule but
    those that declare `streaming = True` (the default is the safe one, the matrix)."""
    return getattr(aggregator, "streaming", False) is not True


@dataclass(frozen=True)
class AggregatorSpec:
    """A registered aggregator.

    Attributes:
        name: the `defense.aggregator` value.
        params: its parameter model (`defense.aggregator_params`).
        build: (params, config) → Aggregator; may raise ConfigError for params that do not
            fit the config (e.g. Krum's f against the cohort size).
        label: params → the text the report prints for a cell (e.g. "Krum f=3").
        check: (params, config) → None, raising ConfigError for params that do not fit the
            rest of the config (e.g. Krum's f against the cohort size); run when the config
            is validated, so a grid fails before anything runs.
        per_client: it keeps a history per client (`AggregatorContext.client_indices`, e.g.
            FoolsGold), so it is refused behind a pre-aggregation step whose rows are not
            clients (Bucketing).
    """

    name: str
    params: type[Params]
    build: Callable[..., Aggregator]
    label: Callable[[Params], str]
    check: Callable[..., None] | None = None
    per_client: bool = False


AGGREGATORS: Registry[AggregatorSpec] = Registry("aggregator", "defense.aggregator")
register = AGGREGATORS.register


def pairwise_sq_dists(updates: torch.Tensor) -> torch.Tensor:
    """[n, n] squared L2 distances in float64 via the Gram matrix (one matmul on the
    device). float64 keeps the cancellation in ‖a‖² + ‖b‖² − 2a·b far below float32
    input precision; the diagonal is exactly 0 and tiny negatives are clamped."""
    x = updates.to(torch.float64)
    sq = (x * x).sum(dim=1)
    d = sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
    d = d.clamp_min(0.0)
    d.fill_diagonal_(0.0)
    return d


def cosine_similarity_matrix(x: torch.Tensor) -> torch.Tensor:
    """[n, n] cosine similarities in float64; a zero row has similarity 0 to everything."""
    x = x.to(torch.float64)
    norms = torch.linalg.vector_norm(x, dim=1)
    unit = x / torch.where(norms > 0, norms, torch.ones_like(norms))[:, None]
    return unit @ unit.T


def median_1d(v: torch.Tensor) -> float:
    """The median of a 1-d tensor, the mean of the two middle values when its length is even
    (torch.median returns the lower one)."""
    s = v.to(torch.float64).sort().values
    n = s.numel()
    return float(s[n // 2]) if n % 2 else float((s[n // 2 - 1] + s[n // 2]) / 2)


def flag_metrics(accepted: tuple[bool, ...]) -> dict:
    """Counts every selecting aggregator reports."""
    sel = sum(accepted)
    return {"agg_selected": sel, "agg_flagged": len(accepted) - sel}
