"""SignGuard (Xu, Huang, Song and Lan 2022, "SignGuard: Byzantine-robust federated learning
through collaborative malicious gradient filtering", ICDCS), its plain variant (the authors'
`signguard_multiclass`, JianXu95/SignGuard `aggregators/signguard.py`):
  1. norm filter: with S the median of the n update norms, keep the updates with
     L·S < ‖Δ_i‖ < R·S (L = 0.1, R = 3.0; strict, as the code);
  2. sign filter: on one random contiguous block of ⌊10 %·d⌋ coordinates, each update's
     fractions of positive, zero and negative entries, each divided by its maximum over the
     cohort (+1e-8, as the code), are clustered by MeanShift (scikit-learn, as the code:
     bandwidth = estimate_bandwidth(quantile=0.5, n_samples=50), bin_seeding, cluster_all=
     False); the largest cluster is kept (ties to the lower label, as the code's argmax);
  3. the updates in both sets are averaged (unweighted, as the code) after every update is
     clipped to norm S: Δ_i · min(1, S/‖Δ_i‖).
`accepted` is the intersection, so the round reports flag rates. No f is needed.
Where we follow the code over the paper, or choose: the feature normalisation and the
clustering settings are the code's; the block's start is drawn uniformly from all d − b + 1
positions (the code's `torch.randint(0, d − b)` never draws the last one) from the round's
AGG_NOISE stream (`fl_core.rng`); S is the median with the two middle norms averaged for
even n, for both the filter and the clip (the code's clip takes torch's lower middle);
when estimate_bandwidth returns 0 (every feature vector has an identical twin among its
⌊n/2⌋ nearest; MeanShift refuses 0), the clusters are the groups of identical feature
vectors (mean shift's limit as the bandwidth goes to 0); when no update passes both filters
the aggregate is the zero update (the code would average nothing, NaN). The cohort must
have at least 4 updates (fewer make the bandwidth estimate 0 always). scikit-learn is
imported only when SignGuard runs.
"""

from __future__ import annotations

import warnings

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
    median_1d,
    register,
)
from fl_core.errors import ConfigError
from fl_core.rng import Stream, numpy_rng


class SignGuardParams(Params):
    norm_lower: float = Field(0.1, ge=0, description="L: keep updates with norm > L × the median norm (paper: 0.1)")
    norm_upper: float = Field(3.0, gt=0, description="R: keep updates with norm < R × the median norm (paper: 3.0)")
    block_fraction: float = Field(0.1, gt=0, le=1, description="share of the coordinates in the random "
                                  "contiguous block the sign statistics are taken on (paper: 0.1)")


def check(p: SignGuardParams, cfg) -> None:
    n = cfg.fl.clients_per_round
    if n < 4:
        raise ConfigError("fl.clients_per_round", n, "at least 4 with the SignGuard aggregator (its "
                          "MeanShift bandwidth is the mean distance to the ⌊n/2⌋-th nearest, 0 for n < 4)")
    if p.norm_lower >= p.norm_upper:
        raise ConfigError("defense.aggregator_params.norm_lower", p.norm_lower,
                          f"less than norm_upper = {p.norm_upper}")


def block_start(d: int, b: int, ctx: AggregatorContext) -> int:
    """The block's first coordinate, uniform over 0..d − b, from the round's stream."""
    return int(numpy_rng(ctx.seed, Stream.AGG_NOISE, ctx.round_idx).integers(0, d - b + 1))


def sign_features(block: torch.Tensor) -> np.ndarray:
    """[n, 3] float64: the fractions of positive, zero and negative entries of each row of
    `block`, each column divided by its maximum + 1e-8 (the authors' code)."""
    b = block.shape[1]
    counts = torch.stack([(block > 0).sum(dim=1), (block == 0).sum(dim=1), (block < 0).sum(dim=1)], dim=1)
    frac = counts.cpu().numpy().astype(np.float64) / b
    return frac / (frac.max(axis=0) + 1e-8)


def largest_cluster(feats: np.ndarray) -> tuple[np.ndarray, float]:
    """(boolean mask of the largest MeanShift cluster, the bandwidth used)."""
    from sklearn.cluster import MeanShift, estimate_bandwidth  # lazy: only SignGuard needs it

    n = feats.shape[0]
    bandwidth = float(estimate_bandwidth(feats, quantile=0.5, n_samples=50))
    if bandwidth > 0:
        with warnings.catch_warnings():
            # "Binning data failed ... using data points as seeds": bin_seeding's documented
            # fallback when every bin holds one point (small cohorts); same result, every round
            warnings.filterwarnings("ignore", message="Binning data failed", category=UserWarning)
            labels = MeanShift(bandwidth=bandwidth, bin_seeding=True, cluster_all=False).fit(feats).labels_
    else:  # groups of identical rows, labelled in order of first appearance
        _, first, inverse = np.unique(feats, axis=0, return_index=True, return_inverse=True)
        rank = np.argsort(np.argsort(first, kind="stable"), kind="stable")
        labels = rank[inverse.reshape(-1)]
    clustered = labels[labels >= 0]
    if clustered.size == 0:  # MeanShift left every point outside its clusters
        return np.zeros(n, dtype=bool), bandwidth
    return labels == int(np.argmax(np.bincount(clustered))), bandwidth


class SignGuard:
    def __init__(self, p: SignGuardParams):
        self.p = p

    def aggregate(self, updates: torch.Tensor, weights: torch.Tensor, ctx: AggregatorContext,
                  state: dict) -> Aggregate:
        n, d = updates.shape
        # row by row in float64: no [n, d] float64 copy
        norms = torch.stack([torch.linalg.vector_norm(updates[i].to(torch.float64)) for i in range(n)])
        s = median_1d(norms)
        norms_cpu = norms.cpu()
        by_norm = ((norms_cpu > self.p.norm_lower * s) & (norms_cpu < self.p.norm_upper * s)).numpy()
        b = max(int(self.p.block_fraction * d), 1)
        start = block_start(d, b, ctx)
        by_sign, bandwidth = largest_cluster(sign_features(updates[:, start:start + b]))
        accepted = tuple(bool(x) for x in by_norm & by_sign)
        metrics = {**flag_metrics(accepted), "signguard_median_norm": s, "signguard_bandwidth": bandwidth,
                   "signguard_norm_rejected": int(n - by_norm.sum()), "signguard_sign_rejected": int(n - by_sign.sum())}
        keep = [i for i in range(n) if accepted[i]]
        if not keep:
            return Aggregate(torch.zeros(d, device=updates.device), metrics, accepted=accepted)
        # Σ_kept min(1, S/‖Δ_i‖)·Δ_i / |kept|, in key order with a float64 sum
        run = RunningMean(updates.device)
        for i in keep:
            norm = float(norms_cpu[i])
            run.add(updates[i], s / norm if norm > s else 1.0)
        return Aggregate(run.mean(total=len(keep)), metrics, accepted=accepted)


SPEC = register(AggregatorSpec(
    "signguard", SignGuardParams, lambda p, cfg: SignGuard(p),
    lambda p: "SignGuard" + "".join(f" {k}={v:g}" for k, v, default in (
        ("L", p.norm_lower, 0.1), ("R", p.norm_upper, 3.0), ("block", p.block_fraction, 0.1)) if v != default),
    check=check,
))
