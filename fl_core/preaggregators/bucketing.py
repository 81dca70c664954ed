"""Bucketing (Karimireddy, He & Jaggi, "Byzantine-robust learning on heterogeneous datasets
via bucketing", ICLR 2022, Algorithm 1): shuffle the n rows with a random permutation π,
cut them into ⌈n/s⌉ consecutive buckets of s (the last one holds the n mod s left over, if
any) and hand the buckets' means to the aggregator. Mixing s updates per row shrinks the
heterogeneity a robust rule sees, at the price of letting one attacker spoil a whole bucket.

Following the authors' code (epfml/byzantine-robust-noniid-optimizer, `utils.py`
`bucketing_wrapper`): s = 2 by default, the last bucket is the plain mean of what is left
(ByzFL's `Bucketing` does the same; its default s = 1 is a no-op), and a bucket's row is the
unweighted mean of its members, as in the paper, where every worker counts the same.

Our choices where neither says:
- π is drawn from the named stream `Stream.PREAGG` keyed by (round, position of the step in
  `defense.preaggregation`), never global RNG: the same seed gives the same buckets on every
  backend, worker count and resume.
- A bucket's FedAvg weight is the sum of its members' weights, so a weight-using aggregator
  (FedAvg) behind Bucketing weighs a bucket by what it holds; under uniform weights FedAvg
  of the bucket means then equals the plain mean of all updates, whatever n mod s.
- Rows are buckets, not clients (`keeps_rows = False`): a selecting aggregator's choice is
  not scored against the clients' roles (no flag_tpr/flag_fpr) and rules that keep per-client
  history (FoolsGold) are refused behind it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from pydantic import Field

from fl_core.errors import ConfigError
from fl_core.preaggregators.base import PreaggContext, PreaggregatorSpec, Params, params_key, register
from fl_core.rng import Stream, numpy_rng

if TYPE_CHECKING:
    import numpy as np
    import torch


class BucketingParams(Params):
    s: int = Field(2, ge=1, description="bucket size: updates averaged per row (the authors' code: 2); "
                   "the aggregator sees ceil(n/s) rows")


def permutation(seed: int, round_idx: int, position: int, n: int) -> "np.ndarray":
    """π for one round: a permutation of range(n) from `Stream.PREAGG`."""
    return numpy_rng(seed, Stream.PREAGG, round_idx, position).permutation(n)


def buckets(perm: "np.ndarray", s: int) -> list[list[int]]:
    """The row indices of each bucket: consecutive runs of s in `perm`, the last one shorter."""
    p = [int(i) for i in perm]
    return [p[j:j + s] for j in range(0, len(p), s)]


def bucket_means(updates: "torch.Tensor", weights: "torch.Tensor", groups: list[list[int]]):
    """[m, d] float32 unweighted bucket means (each summed in float64 in bucket order) and
    [m] float64 bucket weights (sum of the members')."""
    import torch

    rows, w = [], []
    for g in groups:
        idx = torch.tensor(g, device=updates.device)
        rows.append((updates.index_select(0, idx).to(torch.float64).sum(dim=0) / len(g)).to(torch.float32))
        w.append(sum(float(weights[i]) for i in g))
    return torch.stack(rows), torch.tensor(w, dtype=torch.float64)


class Bucketing:
    def __init__(self, s: int):
        self.s = s

    def apply(self, updates: "torch.Tensor", weights: "torch.Tensor", ctx: PreaggContext):
        perm = permutation(ctx.seed, ctx.round_idx, ctx.position, updates.shape[0])
        rows, w = bucket_means(updates, weights, buckets(perm, self.s))
        return rows, w, {"bucketing_buckets": rows.shape[0]}


def _check(p: BucketingParams, n: int, config) -> None:
    if p.s > n:
        raise ConfigError(f"{params_key('bucketing')}.s", p.s,
                          f"at most the {n} updates bucketing receives (s = n already averages them all)")


SPEC = register(PreaggregatorSpec(
    "bucketing", BucketingParams, lambda p, cfg: Bucketing(p.s),
    label=lambda p: f"bucketing s={p.s}",
    rows_out=lambda p, n: math.ceil(n / p.s),
    keeps_rows=False,
    check=_check,
))
