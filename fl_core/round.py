"""One FedAvg round with attacks and defenses (Sun et al. 2019 §1–2):

    w_{t+1} = w_t + η · D_agg( A( D_client(Δ_1), …, D_client(Δ_n) ) )

where Δ_k = w_k − w_t are the clients' updates (attackers' already boosted), D_client are
the per-client defense hooks (clipping), A the aggregator (`defense.aggregator`: FedAvg's
mean weighted by n_k or uniform, or a robust rule) and D_agg the server hooks (noise).
Every hook's and the aggregator's metrics become the round's; for an aggregator that
selects or flags clients, the round (which knows the roles; the aggregator does not)
scores its choice: attacker = positive. Deterministic given (state, plan); never mutates
its inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from fl_core.aggregation import fedavg_weights, key_order
from fl_core.aggregators.base import AggregatorContext
from fl_core.config import SimulationConfig
from fl_core.defenses.base import AggregateContext
from fl_core.errors import DivergedError
from fl_core.executor import ClientExecutor
from fl_core.params import l2_norm
from fl_core.state import SimulationState
from fl_core.types import ClientResult, RoundPlan


@dataclass(frozen=True)
class RoundStats:
    """Norms of the round (the figures NOTES.md says to watch: benign p90 is below 2), and
    what the defense hooks and the aggregator reported (`extra`)."""

    num_attackers: int
    benign_norms: tuple[float, ...]
    attacker_norm_pre: float | None
    attacker_norm_post: float | None
    aggregate_norm: float
    extra: dict = field(default_factory=dict)

    def as_metrics(self) -> dict:
        b = np.asarray(self.benign_norms) if self.benign_norms else None
        return {
            "num_attackers": self.num_attackers,
            "benign_norm_p50": float(np.percentile(b, 50)) if b is not None else None,
            "benign_norm_p90": float(np.percentile(b, 90)) if b is not None else None,
            "benign_norm_max": float(b.max()) if b is not None else None,
            "attacker_norm_pre": self.attacker_norm_pre,
            "attacker_norm_post": self.attacker_norm_post,
            "aggregate_norm": self.aggregate_norm,
            **self.extra,
        }


def flag_rates(accepted: Sequence[bool], roles: Sequence[str]) -> dict:
    """True/false positive rates of the clients an aggregator rejected (flagged), attacker =
    positive: TPR = flagged attackers / attackers, FPR = flagged benign / benign clients;
    None when the round has no client of that role."""
    att = [not a for a, r in zip(accepted, roles) if r == "attacker"]
    ben = [not a for a, r in zip(accepted, roles) if r == "benign"]
    return {
        "flag_tpr": sum(att) / len(att) if att else None,
        "flag_fpr": sum(ben) / len(ben) if ben else None,
    }


def _merge(into: dict, new: dict, source: str) -> None:
    clash = set(into) & set(new)
    assert not clash, f"{source} reports metrics another hook reported: {sorted(clash)}"
    into.update(new)


def apply_round(
    config: SimulationConfig,
    state: SimulationState,
    plan: RoundPlan,
    results: Sequence[ClientResult],
    defenses: Sequence,
    aggregator=None,
    device: torch.device | str = "cpu",
) -> tuple[SimulationState, RoundStats]:
    """Server side of a round: defend, aggregate, apply. Raises DivergedError on NaN/inf.

    Args:
        aggregator: the `fl_core.aggregators` rule; None builds the config's.
        device: where the aggregator works on the stacked [n, d] updates (the trial's
            device); the new global weights stay on CPU.
    """
    if aggregator is None:
        from fl_core.registry import make_aggregator

        aggregator = make_aggregator(config)
    ordered = [results[i] for i in key_order(results)]
    deltas, pre_norms, post_norms = [], [], []
    per_client: dict[str, list[float]] = {}
    for res in ordered:
        d = res.delta
        pre_norms.append(l2_norm(d))
        for defense in defenses:
            d, m = defense.on_client(d)
            for k, v in m.items():
                per_client.setdefault(k, []).append(float(v))
        post_norms.append(l2_norm(d))
        deltas.append(d)
    extra = {k: float(np.mean(v)) for k, v in per_client.items()}
    updates = torch.stack(deltas).to(device)
    weights = fedavg_weights(ordered, config.uniform_weighting)
    actx = AggregatorContext(config.seed, plan.round_idx, len(ordered), tuple(r.client_index for r in ordered))
    agg = aggregator.aggregate(updates, weights, actx, state.aggregator_state)
    _merge(extra, agg.metrics, "the aggregator")
    if agg.accepted is not None:
        _merge(extra, flag_rates(agg.accepted, [r.role for r in ordered]), "the aggregator")
    mean = agg.delta.to("cpu", torch.float32)
    ctx = AggregateContext(config.seed, plan.round_idx, len(results))
    for defense in reversed(list(defenses)):
        mean, m = defense.on_aggregate(mean, ctx)
        _merge(extra, m, type(defense).__name__)
    new_params = state.global_params + config.fl.server_lr * mean
    if not bool(torch.isfinite(new_params).all()):
        raise DivergedError(plan.round_idx + 1)
    att = [i for i, r in enumerate(ordered) if r.role == "attacker"]
    stats = RoundStats(
        num_attackers=len(att),
        benign_norms=tuple(pre_norms[i] for i, r in enumerate(ordered) if r.role == "benign"),
        attacker_norm_pre=max((pre_norms[i] for i in att), default=None),
        attacker_norm_post=max((post_norms[i] for i in att), default=None),
        aggregate_norm=l2_norm(mean),
        extra=extra,
    )
    new_state = state.replace(round_idx=plan.round_idx + 1, global_params=new_params,
                              aggregator_state=agg.state)
    return new_state, stats


def run_round(
    config: SimulationConfig,
    state: SimulationState,
    plan: RoundPlan,
    executor: ClientExecutor,
    defenses: Sequence,
    aggregator=None,
    device: torch.device | str = "cpu",
) -> tuple[SimulationState, RoundStats]:
    """Train the plan's tasks with `executor`, then `apply_round`."""
    assert plan.round_idx == state.round_idx, (plan.round_idx, state.round_idx)
    results = executor.map(plan.tasks, state.global_params)
    return apply_round(config, state, plan, results, defenses, aggregator, device)
