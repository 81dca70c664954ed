"""FedAvg aggregation: Σ w_k Δ_k / Σ w_k in a fixed order with a float64 accumulator, so the
result is bit-identical under any permutation of the results (and any worker count).
w_k = n_k (weighted FedAvg, McMahan et al. 2017) or 1 (unweighted mean, the reference
code's rule when clipping/DP is on)."""

from __future__ import annotations

from typing import Sequence

import torch

from fl_core.types import ClientResult, Delta


def weighted_mean(results: Sequence[ClientResult], deltas: Sequence[Delta], uniform: bool) -> Delta:
    """Mean of `deltas` (aligned with `results`), ordered by (client_index, slot)."""
    order = sorted(range(len(results)), key=lambda i: (results[i].client_index, results[i].slot))
    acc = torch.zeros_like(deltas[0], dtype=torch.float64)
    total = 0.0
    for i in order:
        w = 1.0 if uniform else float(results[i].num_examples)
        acc.add_(deltas[i].to(torch.float64), alpha=w)
        total += w
    return (acc / total).to(torch.float32)
