"""Coordinate-wise trimmed mean (Yin et al. 2018, "Byzantine-robust distributed learning:
towards optimal statistical rates", ICML, Definition 2): per coordinate, drop the k = ⌊β·n⌋
largest and the k smallest of the n values and average the remaining n − 2k (float64 sum).
Unweighted, as in the paper."""

from __future__ import annotations

import math

import torch
from pydantic import Field

from fl_core.aggregators.base import Aggregate, AggregatorContext, AggregatorSpec, Params, register


class TrimmedMeanParams(Params):
    beta: float = Field(0.1, ge=0, lt=0.5, description="β: share of the n values trimmed at EACH end, "
                        "k = floor(β·n); 0 ≤ β < 0.5")


def trimmed_mean(updates: torch.Tensor, beta: float) -> tuple[torch.Tensor, int]:
    """([d] float32 trimmed mean, k trimmed per end)."""
    n = updates.shape[0]
    k = math.floor(beta * n)
    kept = updates.sort(dim=0).values[k:n - k].to(torch.float64)
    return (kept.sum(dim=0) / (n - 2 * k)).to(torch.float32), k


class TrimmedMean:
    def __init__(self, beta: float):
        self.beta = beta

    def aggregate(self, updates: torch.Tensor, weights: torch.Tensor, ctx: AggregatorContext,
                  state: dict) -> Aggregate:
        mean, k = trimmed_mean(updates, self.beta)
        return Aggregate(mean, {"agg_trimmed_per_end": k})


SPEC = register(AggregatorSpec(
    "trimmed-mean", TrimmedMeanParams, lambda p, cfg: TrimmedMean(p.beta),
    lambda p: f"trimmed mean β={p.beta:g}",
))
