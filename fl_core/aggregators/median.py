"""Coordinate-wise median (Yin et al. 2018, "Byzantine-robust distributed learning: towards
optimal statistical rates", ICML): each coordinate of the aggregate is the median of that
coordinate over the n updates; for even n the mean of the two middle values (Yin et al.'s
definition; torch.median would return the lower one). Unweighted: the FedAvg weights are
not used, as in the paper."""

from __future__ import annotations

import torch

from fl_core.aggregators.base import Aggregate, AggregatorContext, AggregatorSpec, Params, register


class MedianParams(Params):
    pass


def coordinate_median(updates: torch.Tensor) -> torch.Tensor:
    """[n, d] → [d] float32 coordinate-wise median (middle pair averaged in float64)."""
    s = updates.sort(dim=0).values
    n = s.shape[0]
    if n % 2:
        return s[n // 2].to(torch.float32)
    return ((s[n // 2 - 1].to(torch.float64) + s[n // 2].to(torch.float64)) / 2).to(torch.float32)


class Median:
    def aggregate(self, updates: torch.Tensor, weights: torch.Tensor, ctx: AggregatorContext,
                  state: dict) -> Aggregate:
        return Aggregate(coordinate_median(updates))


SPEC = register(AggregatorSpec("median", MedianParams, lambda p, cfg: Median(), lambda p: "median"))
