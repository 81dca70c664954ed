"""FedAvg (McMahan et al. 2017): Σ w_k Δ_k / Σ w_k, with the row-by-row float64 sum of
`fl_core.aggregation`, bit-identical to the engine's mean before aggregators existed. The
default `defense.aggregator`; norm clipping and weak DP (Sun et al. 2019) are the per-client
and aggregate hooks around it, not aggregators."""

from __future__ import annotations

import torch

from fl_core.aggregation import ordered_weighted_mean
from fl_core.aggregators.base import Aggregate, AggregatorContext, AggregatorSpec, Params, register


class FedAvgParams(Params):
    pass


class FedAvg:
    def aggregate(self, updates: torch.Tensor, weights: torch.Tensor, ctx: AggregatorContext,
                  state: dict) -> Aggregate:
        return Aggregate(ordered_weighted_mean(updates, weights))


SPEC = register(AggregatorSpec("fedavg", FedAvgParams, lambda p, cfg: FedAvg(), lambda p: "FedAvg"))
