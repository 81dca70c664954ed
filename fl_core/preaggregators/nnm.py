"""Nearest Neighbor Mixing (Allouah, Farhadkhani, Guerraoui, Gupta, Pinot & Stephan, "Fixing
by mixing: a recipe for optimal Byzantine ML under heterogeneity", AISTATS 2023, Algorithm
1): each row x_i becomes the mean of its n − f nearest rows in L2 distance, itself included
(at distance 0); the aggregator then runs on the n mixed rows. f is the number of Byzantine
updates the server assumes; the paper's guarantee needs n > 2f.

Unset, f is the largest that allows, ⌊(n − 1)/2⌋ (as Krum's default here is the largest Krum
tolerates); ByzFL's `NNM` defaults to f = 0, which averages all n rows into n copies of the
mean. n is the number of rows NNM receives (after an earlier Bucketing, ⌈n/s⌉).

Where the paper leaves it open: ties in distance go to the lower row (a stable sort; ByzFL's
argpartition breaks them arbitrarily, so its cross-check uses inputs without ties); the
distances are the float64 Gram-matrix squared distances the aggregators use
(`pairwise_sq_dists`; squaring keeps the order of ByzFL's cdist), and the means are summed in
float64. A row keeps its FedAvg weight, and row i is still client i's (`keeps_rows`), so a
selecting aggregator's flags after NNM are scored against the clients' roles.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from fl_core.errors import ConfigError
from fl_core.preaggregators.base import PreaggContext, PreaggregatorSpec, Params, params_key, register

if TYPE_CHECKING:
    import torch

#: float64 elements of one column block of the mixing product (a 256 MB working set). It
#: depends on nothing but n, so the blocks (and the bits) are the same on every run.
_BLOCK_ELEMENTS = 32 * 2**20


class NNMParams(Params):
    f: int | None = Field(None, ge=0, description="assumed number of Byzantine updates among the rows NNM "
                          "receives; each row becomes the mean of its n - f nearest; null = floor((n - 1) / 2), "
                          "the most NNM tolerates (n > 2f)")


def resolve_f(f: int | None, n: int) -> int:
    return max((n - 1) // 2, 0) if f is None else f


def neighbours(updates: "torch.Tensor", k: int) -> "torch.Tensor":
    """[n, k] indices of each row's k nearest rows (itself first unless tied at 0; ties to
    the lower index)."""
    import torch

    from fl_core.aggregators.base import pairwise_sq_dists

    return torch.sort(pairwise_sq_dists(updates), dim=1, stable=True).indices[:, :k]


def mix(updates: "torch.Tensor", idx: "torch.Tensor") -> "torch.Tensor":
    """[n, d] float32: row i = mean of the rows idx[i], as a 0/1 mixing matrix times the
    float64 updates, in column blocks that bound the float64 copy."""
    import torch

    n, d = updates.shape
    k = idx.shape[1]
    mixing = torch.zeros(n, n, dtype=torch.float64, device=updates.device)
    mixing.scatter_(1, idx.to(updates.device), 1.0)
    out = torch.empty_like(updates, dtype=torch.float32)
    step = max(_BLOCK_ELEMENTS // max(n, 1), 1)
    for c in range(0, d, step):
        out[:, c:c + step] = (mixing @ updates[:, c:c + step].to(torch.float64) / k).to(torch.float32)
    return out


class NNM:
    def __init__(self, f: int | None):
        self.f = f

    def apply(self, updates: "torch.Tensor", weights: "torch.Tensor", ctx: PreaggContext):
        n = updates.shape[0]
        f = resolve_f(self.f, n)
        if not 2 * f < n:  # the config check refuses it; a direct caller gets the same rule
            raise ConfigError(f"{params_key('nnm')}.f", f, f"less than n/2 = {n / 2:g} (NNM receives {n} rows)")
        return mix(updates, neighbours(updates, n - f)), weights.clone(), {"nnm_f": f}


def _check(p: NNMParams, n: int, config) -> None:
    if p.f is not None and not 2 * p.f < n:
        raise ConfigError(f"{params_key('nnm')}.f", p.f,
                          f"at most {(n - 1) // 2}: NNM needs n > 2f for the n = {n} rows it receives "
                          "(Allouah et al. 2023)")


SPEC = register(PreaggregatorSpec(
    "nnm", NNMParams, lambda p, cfg: NNM(p.f),
    label=lambda p: "NNM" + ("" if p.f is None else f" f={p.f}"),
    rows_out=lambda p, n: n,
    keeps_rows=True,
    check=_check,
))
