"""Krum (Blanchard et al. 2017, "Machine learning with adversaries: Byzantine tolerant
gradient descent", NeurIPS): each update's score is the sum of its squared L2 distances to
its n − f − 2 closest other updates; the update with the lowest score is the aggregate.
Ties go to the first in (client_index, slot) order. f is the number of attackers the server
assumes; the score needs n − f − 2 ≥ 1 (Blanchard et al.'s guarantee needs 2f + 2 < n).
Unset, f is the largest the guarantee allows, ⌊(n − 3)/2⌋. The FedAvg weights are not used.
"""

from __future__ import annotations

import torch
from pydantic import Field

from fl_core.aggregators.base import (
    Aggregate,
    AggregatorContext,
    AggregatorSpec,
    Params,
    flag_metrics,
    pairwise_sq_dists,
    register,
)
from fl_core.errors import ConfigError


class KrumParams(Params):
    f: int | None = Field(None, ge=0, description="assumed number of attackers per round; "
                          "null = floor((n - 3) / 2), the most Krum tolerates")


def resolve_f(f: int | None, n: int) -> int:
    return max((n - 3) // 2, 0) if f is None else f


def check_f(f: int | None, cohort: int, key: str = "defense.aggregator_params.f") -> None:
    if f is not None and cohort - f - 2 < 1:
        raise ConfigError(key, f, f"at most fl.clients_per_round − 3 = {cohort - 3} (the Krum score "
                          "sums the distances to the n − f − 2 closest updates)")
    if cohort < 3:
        raise ConfigError("fl.clients_per_round", cohort, "at least 3 with a Krum aggregator")


def nearest_sum(d: torch.Tensor, k: int) -> torch.Tensor:
    """[n]: each row's sum of its k smallest off-diagonal entries of the squared-distance
    matrix `d` (each row sorted ascending starts with its own 0 on the diagonal: skip it)."""
    return d.sort(dim=1).values[:, 1 : 1 + k].sum(dim=1)


def krum_scores(updates: torch.Tensor, f: int) -> torch.Tensor:
    """[n] float64: Σ of the squared distances to the n − f − 2 nearest other updates."""
    return nearest_sum(pairwise_sq_dists(updates), updates.shape[0] - f - 2)


class Krum:
    def __init__(self, f: int | None):
        self.f = f

    def aggregate(self, updates: torch.Tensor, weights: torch.Tensor, ctx: AggregatorContext,
                  state: dict) -> Aggregate:
        n = updates.shape[0]
        f = resolve_f(self.f, n)
        scores = krum_scores(updates, f)
        best = int(torch.argmin(scores))  # first minimum: ties go to the lower key
        accepted = tuple(i == best for i in range(n))
        return Aggregate(updates[best].to(torch.float32).clone(),
                         {**flag_metrics(accepted), "krum_f": f}, accepted=accepted)


SPEC = register(AggregatorSpec(
    "krum", KrumParams, lambda p, cfg: Krum(p.f),
    lambda p: "Krum" + ("" if p.f is None else f" f={p.f}"),
    check=lambda p, cfg: check_f(p.f, cfg.fl.clients_per_round),
))
