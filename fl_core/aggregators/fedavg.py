"""FedAvg (McMahan et al. 2017): Σ w_k Δ_k / Σ w_k, with the row-by-row float64 sum of
`fl_core.aggregation`, bit-identical to the engine's mean before aggregators existed. The
default `defense.aggregator`; norm clipping and weak DP (Sun et al. 2019) are the per-client
and aggregate hooks around it, not aggregators.

It streams (`streaming = True`): the round adds each update to a `RunningMean` as it
arrives, in (client_index, slot) order, the same adds `aggregate` does on the stacked
matrix, so a 1,000-client round holds one float64 sum instead of 1,000 updates."""

from __future__ import annotations

import torch

from fl_core.aggregation import RunningMean, ordered_weighted_mean
from fl_core.aggregators.base import Aggregate, AggregatorContext, AggregatorSpec, Params, register


class FedAvgParams(Params):
    pass


class _Running:
    def __init__(self, device: torch.device | str):
        self.mean = RunningMean(device)

    def add(self, update: torch.Tensor, weight: float) -> None:
        self.mean.add(update, weight)

    def result(self) -> Aggregate:
        return Aggregate(self.mean.mean())


class FedAvg:
    streaming = True

    def aggregate(self, updates: torch.Tensor, weights: torch.Tensor, ctx: AggregatorContext,
                  state: dict) -> Aggregate:
        return Aggregate(ordered_weighted_mean(updates, weights))

    def accumulator(self, ctx: AggregatorContext, state: dict, device: torch.device | str) -> _Running:
        return _Running(device)


SPEC = register(AggregatorSpec("fedavg", FedAvgParams, lambda p, cfg: FedAvg(), lambda p: "FedAvg"))
