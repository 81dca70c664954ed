"""FLAME (Nguyen et al. 2022, "FLAME: taming backdoors in federated learning", USENIX
Security, Algorithm 1), three steps:
  1. filter: HDBSCAN on the pairwise cosine distances 1 − cos(Δ_i, Δ_j) with
     min_cluster_size = ⌊n/2⌋ + 1 (so at most one cluster: the majority), min_samples = 1,
     allow_single_cluster; the updates outside that cluster are rejected;
  2. adaptive clipping: S = the median of all n update norms ‖Δ_i‖; each admitted update
     is scaled by min(1, S/‖Δ_i‖); they are averaged with their FedAvg weights;
  3. noise: N(0, (λ·S)²) per coordinate on the aggregate, one draw of the full vector
     from the round's AGG_NOISE stream (fl_core.rng), on CPU in float32.
Choices where the paper leaves room: we cluster the updates Δ_i (the paper writes the local
models W_i = W_g + Δ_i; the aggregator sees updates only, and the shared W_g would dominate
the models' cosine); the noise goes on the aggregate update, which equals adding it to the
model at η = 1; when HDBSCAN finds no cluster, or the cohort has fewer than 3 updates,
every update is admitted (counted in `flame_no_cluster`). λ = 0.001 is the paper's value
for image classification. scikit-learn's HDBSCAN is imported only when FLAME runs, so
fl_core imports without scikit-learn.
"""

from __future__ import annotations

import torch
from pydantic import Field

from fl_core.aggregation import ordered_weighted_mean
from fl_core.aggregators.base import (
    Aggregate,
    AggregatorContext,
    AggregatorSpec,
    Params,
    cosine_similarity_matrix,
    flag_metrics,
    median_1d,
    register,
)
from fl_core.rng import Stream, torch_generator


class FlameParams(Params):
    noise_lambda: float = Field(0.001, ge=0, description="λ: noise std per coordinate = λ × the median "
                                "update norm (paper: 0.001 for image classification); 0 = no noise")


def majority_cluster(updates: torch.Tensor) -> tuple[bool, ...] | None:
    """Admitted rows (HDBSCAN's one cluster), or None if it found none."""
    from sklearn.cluster import HDBSCAN  # lazy: only FLAME needs scikit-learn

    n = updates.shape[0]
    dist = (1.0 - cosine_similarity_matrix(updates)).clamp_min(0.0)
    dist.fill_diagonal_(0.0)
    labels = HDBSCAN(
        min_cluster_size=n // 2 + 1, min_samples=1, metric="precomputed", allow_single_cluster=True, copy=True,
    ).fit_predict(dist.cpu().numpy())
    if (labels < 0).all():
        return None
    # two clusters would each need more than n/2 members: the non-noise label is unique
    return tuple(bool(lab >= 0) for lab in labels)


class Flame:
    def __init__(self, noise_lambda: float):
        self.noise_lambda = noise_lambda

    def draw(self, d: int, ctx: AggregatorContext) -> torch.Tensor:
        gen = torch_generator(ctx.seed, Stream.AGG_NOISE, ctx.round_idx)
        return torch.randn(d, generator=gen, dtype=torch.float32)

    def aggregate(self, updates: torch.Tensor, weights: torch.Tensor, ctx: AggregatorContext,
                  state: dict) -> Aggregate:
        n, d = updates.shape
        admitted = majority_cluster(updates) if n >= 3 else None
        no_cluster = admitted is None
        if admitted is None:
            admitted = (True,) * n
        norms = torch.linalg.vector_norm(updates.to(torch.float64), dim=1)
        s = median_1d(norms)
        scale = torch.where(norms > s, s / norms.clamp_min(torch.finfo(torch.float64).tiny),
                            torch.ones_like(norms))
        keep = [i for i in range(n) if admitted[i]]
        idx = torch.tensor(keep, device=updates.device)
        clipped = (updates[idx].to(torch.float64) * scale[idx][:, None]).to(torch.float32)
        delta = ordered_weighted_mean(clipped, weights[idx.cpu()])
        std = self.noise_lambda * s
        if std > 0:
            noise = self.draw(d, ctx)
            assert noise.shape == delta.shape  # one draw per coordinate, nothing broadcast
            delta = delta + std * noise.to(delta.device)
        metrics = {**flag_metrics(admitted), "flame_median_norm": s, "flame_noise_std": std,
                   "flame_no_cluster": int(no_cluster)}
        return Aggregate(delta, metrics, accepted=admitted)


SPEC = register(AggregatorSpec(
    "flame", FlameParams, lambda p, cfg: Flame(p.noise_lambda), lambda p: f"FLAME λ={p.noise_lambda:g}",
))
