"""Bulyan (El Mhamdi, Guerraoui and Rouault 2018, "The Hidden Vulnerability of Distributed
Learning in Byzantium", ICML): Krum to choose, then a coordinate-wise trimmed mean of the
chosen, so that an attacker can neither hide in one coordinate nor win by being close
overall.

1. Selection: θ = n − 2f times, take the Krum winner of the updates not yet chosen (its score
   counts its r − f − 2 nearest remaining neighbours, at least 1 and at most r − 1, r =
   updates remaining) and move it into the chosen set S. Ties go to the lower (client_index,
   slot).
2. Aggregation: for every coordinate, the mean of the β = θ − 2f values of S closest to S's
   median there (the median of an even count is the mean of the two middle values; ties in
   distance go to the lower row).
The guarantee needs n ≥ 4f + 3; unset, f is the largest that allows, ⌊(n − 3)/4⌋. The FedAvg
weights are not used (the rule is unweighted, as published).
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
from fl_core.aggregators.krum import nearest_sum
from fl_core.errors import ConfigError


class BulyanParams(Params):
    f: int | None = Field(None, ge=0, description="assumed number of attackers per round; "
                          "null = floor((n - 3) / 4), the most Bulyan tolerates (n ≥ 4f + 3)")


def resolve_f(f: int | None, n: int) -> int:
    return max((n - 3) // 4, 0) if f is None else f


def check(p: BulyanParams, cfg) -> None:
    n = cfg.fl.clients_per_round
    if n < 3:
        raise ConfigError("fl.clients_per_round", n, "at least 3 with the Bulyan aggregator")
    if p.f is not None and n < 4 * p.f + 3:
        raise ConfigError("defense.aggregator_params.f", p.f,
                          f"at most (fl.clients_per_round − 3) / 4 = {(n - 3) // 4} (Bulyan needs n ≥ 4f + 3)")


def select(updates: torch.Tensor, f: int) -> list[int]:
    """The rows Bulyan's iterated Krum chooses, in the order chosen."""
    n = updates.shape[0]
    d = pairwise_sq_dists(updates)
    remaining, chosen = list(range(n)), []
    for _ in range(n - 2 * f):
        r = len(remaining)
        k = min(max(r - f - 2, 1), r - 1)
        scores = nearest_sum(d[remaining][:, remaining], k)
        best = remaining[int(torch.argmin(scores))]  # first minimum: the lower key
        chosen.append(best)
        remaining.remove(best)
    return chosen


def closest_to_median_mean(chosen: torch.Tensor, beta: int) -> torch.Tensor:
    """Per coordinate, the float64 mean of the `beta` values closest to the median."""
    x = chosen.to(torch.float64)
    s = x.sort(dim=0).values
    t = s.shape[0]
    med = s[t // 2] if t % 2 else (s[t // 2 - 1] + s[t // 2]) / 2
    order = torch.argsort((x - med).abs(), dim=0, stable=True)[:beta]
    return torch.gather(x, 0, order).mean(dim=0)


class Bulyan:
    def __init__(self, f: int | None):
        self.f = f

    def aggregate(self, updates: torch.Tensor, weights: torch.Tensor, ctx: AggregatorContext,
                  state: dict) -> Aggregate:
        n = updates.shape[0]
        f = resolve_f(self.f, n)
        chosen = sorted(select(updates, f))
        accepted = tuple(i in set(chosen) for i in range(n))
        beta = max(len(chosen) - 2 * f, 1)
        delta = closest_to_median_mean(updates[torch.tensor(chosen, device=updates.device)], beta)
        return Aggregate(delta.to(torch.float32), {**flag_metrics(accepted), "bulyan_f": f}, accepted=accepted)


SPEC = register(AggregatorSpec(
    "bulyan", BulyanParams, lambda p, cfg: Bulyan(p.f),
    lambda p: "Bulyan" + ("" if p.f is None else f" f={p.f}"),
    check=check,
))
