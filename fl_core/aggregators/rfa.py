"""RFA, robust federated aggregation (Pillutla et al. 2019/2022, "Robust aggregation for
federated learning", IEEE TSP): the weighted geometric median argmin_v Σ α_k ‖v − Δ_k‖
(α_k = the FedAvg weights, normalised), approximated by the smoothed Weiszfeld algorithm
of their Algorithm 2: start at the weighted mean, then repeat
    β_k = α_k / max(ν, ‖v − Δ_k‖),   v ← Σ β_k Δ_k / Σ β_k
at most `iterations` times, stopping early once the objective g(v) = Σ α_k ‖v − Δ_k‖
improves by less than `tolerance`·g(v) (their reference code's rule and defaults: 4
iterations, ν = 1e-5, tolerance 1e-6). All in float64 on the trial's device.
"""

from __future__ import annotations

import torch
from pydantic import Field

from fl_core.aggregators.base import Aggregate, AggregatorContext, AggregatorSpec, Params, register


class RFAParams(Params):
    iterations: int = Field(4, ge=1, le=10_000, description="most smoothed Weiszfeld steps")
    nu: float = Field(1e-5, gt=0, description="ν: smoothing; distances below it count as ν")
    tolerance: float = Field(1e-6, ge=0, description="stop when the objective improves by less than "
                             "this share of itself; 0 runs every iteration")


def geometric_median(points: torch.Tensor, alphas: torch.Tensor, iterations: int, nu: float,
                     tolerance: float) -> tuple[torch.Tensor, int, float]:
    """(v float64 [d], Weiszfeld steps taken, objective g(v)) for `points` [n, d] and
    weights `alphas` [n] (any positive scale)."""
    x = points.to(torch.float64)
    a = alphas.to(torch.float64, copy=True).to(x.device)
    a = a / a.sum()

    def objective(v: torch.Tensor) -> float:
        return float((a * torch.linalg.vector_norm(x - v, dim=1)).sum())

    v = a @ x
    obj = objective(v)
    steps = 0
    for _ in range(iterations):
        beta = a / torch.linalg.vector_norm(x - v, dim=1).clamp_min(nu)
        v = (beta / beta.sum()) @ x
        steps += 1
        prev, obj = obj, objective(v)
        if abs(prev - obj) < tolerance * obj:  # strict, as their code: 0 never stops early
            break
    return v, steps, obj


class RFA:
    def __init__(self, p: RFAParams):
        self.p = p

    def aggregate(self, updates: torch.Tensor, weights: torch.Tensor, ctx: AggregatorContext,
                  state: dict) -> Aggregate:
        v, steps, obj = geometric_median(updates, weights, self.p.iterations, self.p.nu, self.p.tolerance)
        return Aggregate(v.to(torch.float32), {"rfa_iterations": steps, "rfa_objective": obj})


SPEC = register(AggregatorSpec("rfa", RFAParams, lambda p, cfg: RFA(p), lambda p: "RFA"))
