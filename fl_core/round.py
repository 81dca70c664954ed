"""One FedAvg round with attacks and defenses (Sun et al. 2019 §1–2):

    w_{t+1} = w_t + η · D_agg( mean_k D_client(Δ_k) )

where Δ_k = w_k − w_t are the clients' updates (attackers' already boosted), D_client are
the per-client defense hooks (clipping), the mean is weighted by n_k or uniform, and D_agg
the server hooks (noise). Deterministic given (state, plan); never mutates its inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from fl_core.aggregation import weighted_mean
from fl_core.config import SimulationConfig
from fl_core.defenses.base import AggregateContext
from fl_core.errors import DivergedError
from fl_core.executor import ClientExecutor
from fl_core.params import l2_norm
from fl_core.state import SimulationState
from fl_core.types import ClientResult, RoundPlan


@dataclass(frozen=True)
class RoundStats:
    """Norms of the round (the figures NOTES.md says to watch: benign p90 is below 2)."""

    num_attackers: int
    benign_norms: tuple[float, ...]
    attacker_norm_pre: float | None
    attacker_norm_post: float | None
    aggregate_norm: float

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
        }


def apply_round(
    config: SimulationConfig,
    state: SimulationState,
    plan: RoundPlan,
    results: Sequence[ClientResult],
    defenses: Sequence,
) -> tuple[SimulationState, RoundStats]:
    """Server side of a round: defend, aggregate, apply. Raises DivergedError on NaN/inf."""
    deltas, pre_norms, post_norms = [], [], []
    for res in results:
        d = res.delta
        pre_norms.append(l2_norm(d))
        for defense in defenses:
            d, _ = defense.on_client(d)
        post_norms.append(l2_norm(d))
        deltas.append(d)
    mean = weighted_mean(results, deltas, config.uniform_weighting)
    ctx = AggregateContext(config.seed, plan.round_idx, len(results))
    for defense in reversed(list(defenses)):
        mean, _ = defense.on_aggregate(mean, ctx)
    new_params = state.global_params + config.fl.server_lr * mean
    if not bool(torch.isfinite(new_params).all()):
        raise DivergedError(plan.round_idx + 1)
    att = [i for i, r in enumerate(results) if r.role == "attacker"]
    stats = RoundStats(
        num_attackers=len(att),
        benign_norms=tuple(pre_norms[i] for i, r in enumerate(results) if r.role == "benign"),
        attacker_norm_pre=max((pre_norms[i] for i in att), default=None),
        attacker_norm_post=max((post_norms[i] for i in att), default=None),
        aggregate_norm=l2_norm(mean),
    )
    return state.replace(round_idx=plan.round_idx + 1, global_params=new_params), stats


def run_round(
    config: SimulationConfig,
    state: SimulationState,
    plan: RoundPlan,
    executor: ClientExecutor,
    defenses: Sequence,
) -> tuple[SimulationState, RoundStats]:
    """Train the plan's tasks with `executor`, then `apply_round`."""
    assert plan.round_idx == state.round_idx, (plan.round_idx, state.round_idx)
    results = executor.map(plan.tasks, state.global_params)
    return apply_round(config, state, plan, results, defenses)
