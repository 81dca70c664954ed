"""FedAvg aggregation: Σ w_k Δ_k / Σ w_k in a fixed order with a float64 accumulator, so the
result is bit-identical under any permutation of the results (and any worker count).
w_k = n_k (weighted FedAvg, McMahan et al. 2017) or 1 (unweighted mean, the reference
code's rule when clipping/DP is on).

`RunningMean` is that sum one update at a time: the stacked path (`ordered_weighted_mean`,
over an [n, d] matrix) and the streaming path (a round that never holds its n updates,
`fl_core.round`) both add through it, so the two give the same bits for the same order."""

from __future__ import annotations

from typing import Sequence

import torch

from fl_core.types import ClientResult, ClientTask, Delta


class RunningMean:
    """Σ w_k u_k / Σ w_k, one update at a time, in float64 on `device`.

    Each `add` is one `acc.add_(u.double(), alpha=w)`: the bits depend on the order of the
    adds only, never on whether the updates were stacked first or arrived one by one. The
    float64 copy of u goes into one reused buffer (the same values, the same kernel): a
    fresh 9.6 MB tensor per client costs its page faults every time."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.acc: torch.Tensor | None = None
        self._u64: torch.Tensor | None = None
        self.sum_w = 0.0
        self.count = 0

    def add(self, update: torch.Tensor, weight: float) -> None:
        if self.acc is None:
            self.acc = torch.zeros(update.numel(), dtype=torch.float64, device=self.device)
            self._u64 = torch.empty_like(self.acc)
        self.acc.add_(self._u64.copy_(update.reshape(-1)), alpha=weight)
        self.sum_w += weight
        self.count += 1

    def mean(self, total: float | None = None) -> Delta:
        """float32 mean; `total` replaces the denominator Σ w_k."""
        if self.acc is None:
            raise ValueError("the mean of no updates")
        return (self.acc / (self.sum_w if total is None else total)).to(torch.float32)


def ordered_weighted_mean(updates: torch.Tensor, weights: torch.Tensor, total: float | None = None) -> Delta:
    """Σ w_k u_k / Σ w_k over the rows of `updates` [n, d], one row after the other in the
    given order, accumulated in float64 (the callers sort rows by (client_index, slot), so
    the bits do not depend on completion order); returns float32. `total` replaces the
    denominator Σ w_k (FoolsGold divides by the cohort's weight, not by Σ α_k w_k)."""
    run = RunningMean(updates.device)
    if updates.shape[0] == 0:
        run.acc = torch.zeros(updates.shape[1], dtype=torch.float64, device=updates.device)
    for i in range(updates.shape[0]):
        run.add(updates[i], float(weights[i]))
    return run.mean(total)


def key_order(results: Sequence[ClientResult] | Sequence[ClientTask]) -> list[int]:
    """Positions of `results` (or of a plan's tasks) sorted by (client_index, slot): the one
    order the server uses."""
    return sorted(range(len(results)), key=lambda i: (results[i].client_index, results[i].slot))


def fedavg_weight(result: ClientResult, uniform: bool) -> float:
    """One client's FedAvg weight: n_k, or 1 when `uniform`."""
    return 1.0 if uniform else float(result.num_examples)


def fedavg_weights(results: Sequence[ClientResult], uniform: bool) -> torch.Tensor:
    """[n] float64 FedAvg weights aligned with `results`: n_k, or 1 when `uniform`."""
    return torch.tensor([fedavg_weight(r, uniform) for r in results], dtype=torch.float64)


def weighted_mean(results: Sequence[ClientResult], deltas: Sequence[Delta], uniform: bool) -> Delta:
    """Mean of `deltas` (aligned with `results`), ordered by (client_index, slot)."""
    order = key_order(results)
    updates = torch.stack([deltas[i] for i in order])
    return ordered_weighted_mean(updates, fedavg_weights([results[i] for i in order], uniform))
