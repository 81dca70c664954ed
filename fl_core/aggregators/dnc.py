"""Divide-and-Conquer, DnC (Shejwalkar and Houmansadr 2021, "Manipulating the Byzantine:
optimizing model poisoning attacks and defenses for federated learning", NDSS, Algorithm 2):
niters times, sample b coordinates r; centre the updates' sub-vectors on their mean μ_r; v =
the top right singular vector of the centred [n, b] matrix; score each update
s_i = ((Δ_i,r − μ_r) · v)²; keep the n − c·f lowest scores. The good set is the
intersection of the kept sets over the iterations (the paper's Algorithm); the aggregate
is their mean (unweighted, as the paper). `accepted` is the good set, so the round reports
flag rates.
f is the number of attackers the server assumes (the paper gives DnC the true f); unset, it
is ⌊(n − 1)/2⌋, the most a majority filter can assume (as Krum's default is the most Krum
tolerates). The kept count is ⌊n − c·f⌋ (the paper's n − c·f, rounded down as FLPoison's and
the SignGuard authors' ports do) and must be ≥ 1.
Defaults: b = 10,000, niters = 1, c = 1 are Blades' (`src/blades/aggregators/dnc.py`); the
paper's own values could not be confirmed here and the authors' repository
(vrt1shjwlkr/NDSS21-Model-Poisoning) has no DnC code. FLPoison uses b = 20 % of d and 5
iterations; SignGuard's authors b = 1,000 and c = (n − 1)/n. Blades takes the union of the
iterations' sets, FLPoison the intersection (the paper); with niters = 1 they agree.
Our choices: the b coordinates are drawn without replacement from the round's AGG_NOISE
stream, keyed by (round, iteration) (`fl_core.rng`); b ≥ d takes every coordinate (no
draw); ties in score go to the lower (client_index, slot); scores and the SVD are float64;
an empty intersection (possible for niters > 1) gives the zero update.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from pydantic import Field

from fl_core.aggregation import RunningMean
from fl_core.aggregators.base import (
    Aggregate,
    AggregatorContext,
    AggregatorSpec,
    Params,
    flag_metrics,
    register,
)
from fl_core.errors import ConfigError
from fl_core.rng import Stream, numpy_rng


class DnCParams(Params):
    f: int | None = Field(None, ge=0, description="assumed number of attackers per round; "
                          "null = floor((n - 1) / 2)")
    niters: int = Field(1, ge=1, le=1000, description="subsample-and-filter iterations, their kept "
                        "sets intersected (Blades: 1)")
    b: int = Field(10_000, ge=1, description="coordinates sampled per iteration; at least d takes "
                   "all (Blades: 10000)")
    c: float = Field(1.0, gt=0, description="filtering fraction: each iteration keeps the "
                     "floor(n - c·f) lowest scores (Blades: 1)")


def resolve_f(f: int | None, n: int) -> int:
    return max((n - 1) // 2, 0) if f is None else f


def kept_count(n: int, f: int, c: float) -> int:
    return math.floor(n - c * f)


def check(p: DnCParams, cfg) -> None:
    n = cfg.fl.clients_per_round
    f = resolve_f(p.f, n)
    if kept_count(n, f, p.c) < 1:
        key, value = ("defense.aggregator_params.f", p.f) if p.f is not None else ("defense.aggregator_params.c", p.c)
        raise ConfigError(key, value, f"n − c·f ≥ 1 with n = fl.clients_per_round = {n}, "
                          f"c = {p.c:g}, f = {f} (DnC keeps the n − c·f lowest scores)")


def coordinates(d: int, b: int, ctx: AggregatorContext, iteration: int) -> torch.Tensor | None:
    """Sorted coordinates of one iteration's sample, or None for all of them (b ≥ d)."""
    if b >= d:
        return None
    rng = numpy_rng(ctx.seed, Stream.AGG_NOISE, ctx.round_idx, iteration)
    return torch.from_numpy(np.sort(rng.choice(d, size=b, replace=False)))


def dnc_scores(sub: torch.Tensor) -> torch.Tensor:
    """[n] float64 outlier scores ((x_i − μ)·v)² of the rows of `sub` [n, b]."""
    centred = sub.to(torch.float64)
    centred = centred - centred.mean(dim=0)
    v = torch.linalg.svd(centred, full_matrices=False).Vh[0]
    return (centred @ v) ** 2


class DnC:
    def __init__(self, p: DnCParams):
        self.p = p

    def aggregate(self, updates: torch.Tensor, weights: torch.Tensor, ctx: AggregatorContext,
                  state: dict) -> Aggregate:
        n, d = updates.shape
        f = resolve_f(self.p.f, n)
        k = kept_count(n, f, self.p.c)
        assert 1 <= k <= n, "check() keeps n − c·f within 1..n"
        good = set(range(n))
        for it in range(self.p.niters):
            idx = coordinates(d, self.p.b, ctx, it)
            sub = updates if idx is None else updates[:, idx.to(updates.device)]
            order = torch.sort(dnc_scores(sub).cpu(), stable=True).indices
            good &= {int(i) for i in order[:k]}
        accepted = tuple(i in good for i in range(n))
        metrics = {**flag_metrics(accepted), "dnc_f": f, "dnc_b": min(self.p.b, d)}
        if not good:
            return Aggregate(torch.zeros(d, device=updates.device), metrics, accepted=accepted)
        run = RunningMean(updates.device)
        for i in sorted(good):  # key order, float64 sum
            run.add(updates[i], 1.0)
        return Aggregate(run.mean(), metrics, accepted=accepted)


SPEC = register(AggregatorSpec(
    "dnc", DnCParams, lambda p, cfg: DnC(p),
    lambda p: "DnC" + "".join(f" {k}={v:g}" for k, v, default in (
        ("f", p.f, None), ("niters", p.niters, 1), ("b", p.b, 10_000), ("c", p.c, 1.0)) if v != default),
    check=check,
))
