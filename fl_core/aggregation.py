"""FedAvg aggregation: Σ w_k Δ_k / Σ w_k in a fixed order with a float64 accumulator, so the
result is bit-identical under any permutation of the results (and any worker count).
w_k = n_k (weighted FedAvg, McMahan et al. 2017) or 1 (unweighted mean, the reference
code's rule when clipping/DP is on)."""

from __future__ import annotations

from typing import Sequence

import torch

from fl_core.types import ClientResult, Delta


def ordered_weighted_mean(updates: torch.Tensor, weights: torch.Tensor, total: float | None = None) -> Delta:
    """Σ w_k u_k / Σ w_k over the rows of `updates` [n, d], one row after the other in the
    given order, accumulated in float64 (the callers sort rows by (client_index, slot), so
    the bits do not depend on completion order); returns float32. `total` replaces the
    denominator Σ w_k (FoolsGold divides by the cohort's weight, not by Σ α_k w_k)."""
    acc = torch.zeros(updates.shape[1], dtype=torch.float64, device=updates.device)
    sum_w = 0.0
    for i in range(updates.shape[0]):
        w = float(weights[i])
        acc.add_(updates[i].to(torch.float64), alpha=w)
        sum_w += w
    return (acc / (sum_w if total is None else total)).to(torch.float32)


def key_order(results: Sequence[ClientResult]) -> list[int]:
    """Positions of `results` sorted by (client_index, slot): the one order the server uses."""
    return sorted(range(len(results)), key=lambda i: (results[i].client_index, results[i].slot))


def fedavg_weights(results: Sequence[ClientResult], uniform: bool) -> torch.Tensor:
    """[n] float64 FedAvg weights aligned with `results`: n_k, or 1 when `uniform`."""
    return torch.tensor([1.0 if uniform else float(r.num_examples) for r in results], dtype=torch.float64)


def weighted_mean(results: Sequence[ClientResult], deltas: Sequence[Delta], uniform: bool) -> Delta:
    """Mean of `deltas` (aligned with `results`), ordered by (client_index, slot)."""
    order = key_order(results)
    updates = torch.stack([deltas[i] for i in order])
    return ordered_weighted_mean(updates, fedavg_weights([results[i] for i in order], uniform))
