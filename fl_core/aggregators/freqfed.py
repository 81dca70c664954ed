"""FreqFed (Fereidooni, Pegoraro, Rieger, Dmitrienko and Sadeghi 2024, "FreqFed: a frequency
analysis-based approach for mitigating poisoning attacks in federated learning", NDSS). Per
round, for each update Δ_i:
  1. V_i = the 2-D DCT-II (orthonormal) of one layer's weight update as an M × N matrix;
  2. F_i = its low-frequency block: V_i[a, c] with a < ⌊M/2⌋, c < ⌊N/2⌋ and
     a + c ≤ ⌊(M + N)/4⌋, row-major;
  3. HDBSCAN on the cosine distances 1 − cos(F_i, F_j) (precomputed);
  4. the largest cluster is accepted and its updates are averaged with their FedAvg weights.
The reference code read is secretflow/secretflow examples/security/h_bd/agg_freqfed.py
@9d72928 (tensorDCT, filtering, clustering); the paper's hyper-parameters were not found
(ZOO.md: unconfirmed), so those below come from that code, where we follow it:
- the layer: its `client_param[-2]`, the second-to-last parameter array, i.e. the output
  layer's weight matrix; ours is `fc2` (10 × 128) by default. `layer` may name another
  weight of the paper CNN: fc1 (128 × 9216, 98 % of the parameters), conv2 or conv1 (a conv
  kernel [out, in, k, k] as the out × in·k·k matrix);
- the DCT: type II, norm 'ortho', rows then columns (= scipy.fft.dctn over both axes); the
  block and its bound ⌊(M + N)/4⌋ exactly as its `filtering`;
- HDBSCAN min_cluster_size = 2, min_samples = 1 (its values), allow_single_cluster off. With
  min_cluster_size 2 HDBSCAN may split a benign majority into several small clusters and keep
  only the largest of them; `min_cluster_size: null` (⌊n/2⌋ + 1 with
  allow_single_cluster, FLAME's rule, from the same group) allows one cluster at most, and
  finds it when no split exists (without allow_single_cluster a lone majority plus outliers
  is all noise).
Where we differ: secretflow transforms the local MODEL weights W_i = w_t + Δ_i; we
transform the update Δ_i (as FLAME's clustering here: the aggregator sees updates, and the
shared w_t would dominate every cosine; the DCT is linear, DCT(W_i) = DCT(w_t) + DCT(Δ_i)).
Its "largest cluster" is `np.unique(labels)`'s most frequent label, which may be HDBSCAN's
noise label −1; ours is the largest non-noise cluster (ties: the one holding the lowest row,
i.e. the lowest client index). When HDBSCAN finds no cluster at all (e.g. fewer updates than
min_cluster_size) every update is accepted, as FLAME here, counted in `freqfed_no_cluster`.
Cosines are float64; a zero block has cosine 0 to everything.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
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
    register,
)
from fl_core.errors import ConfigError


class FreqFedParams(Params):
    layer: Literal["fc2", "fc1", "conv2", "conv1"] = Field(
        "fc2", description="the CNN weight whose update is transformed (secretflow's code: the output "
        "layer's weight, fc2; a conv kernel is taken as out × in·k·k)")
    min_cluster_size: int | None = Field(
        2, ge=2, description="HDBSCAN min_cluster_size (secretflow's code: 2); null = ⌊n/2⌋ + 1 with "
        "allow_single_cluster (FLAME's majority rule: at most one cluster)")
    min_samples: int = Field(1, ge=1, description="HDBSCAN min_samples (secretflow's code: 1)")


def check(p: FreqFedParams, cfg) -> None:
    n = cfg.fl.clients_per_round
    if p.min_cluster_size is not None and p.min_cluster_size > n:
        raise ConfigError("defense.aggregator_params.min_cluster_size", p.min_cluster_size,
                          f"at most fl.clients_per_round = {n} (HDBSCAN could never form a cluster)")
    if p.min_samples > n:
        raise ConfigError("defense.aggregator_params.min_samples", p.min_samples,
                          f"at most fl.clients_per_round = {n}")


def layer_slice(name: str) -> tuple[int, int, int]:
    """(offset, M, N) of the CNN weight `name` in the flat vector (`model.parameters()`
    order), as an M × N matrix."""
    from fl_core.params import cnn_param_slice

    offset, shape = cnn_param_slice(f"{name}.weight")
    return offset, shape[0], shape.numel() // shape[0]


def low_frequency(v: np.ndarray) -> np.ndarray:
    """The block V[a, c], a < ⌊M/2⌋, c < ⌊N/2⌋, a + c ≤ ⌊(M + N)/4⌋, row-major."""
    m, n = v.shape
    a, c = np.meshgrid(np.arange(m // 2), np.arange(n // 2), indexing="ij")
    return v[: m // 2, : n // 2][a + c <= (m + n) // 4]


def dct_features(mats: np.ndarray) -> np.ndarray:
    """[n, k] float64: each M × N matrix's orthonormal 2-D DCT-II, low-frequency block."""
    from scipy.fft import dctn  # lazy: only FreqFed needs scipy here

    return np.stack([low_frequency(dctn(m, type=2, norm="ortho")) for m in mats.astype(np.float64)])


def largest_cluster(labels: np.ndarray) -> tuple[bool, ...] | None:
    """Members of the largest non-noise cluster (ties: the one holding the lowest row), or
    None when every point is noise."""
    sizes = {lab: int((labels == lab).sum()) for lab in set(labels.tolist()) if lab >= 0}
    if not sizes:
        return None
    first = {lab: int(np.flatnonzero(labels == lab)[0]) for lab in sizes}
    best = min(sizes, key=lambda lab: (-sizes[lab], first[lab]))
    return tuple(bool(x == best) for x in labels)


def cluster(features: np.ndarray, min_cluster_size: int, min_samples: int, single: bool = False) -> np.ndarray:
    """HDBSCAN labels on the cosine distances of the rows (−1 = noise); all noise when there
    are fewer rows than it needs. `single`: allow_single_cluster (for the majority rule)."""
    from sklearn.cluster import HDBSCAN  # lazy: only the clustering rules need scikit-learn

    n = features.shape[0]
    if n < max(min_cluster_size, min_samples):
        return np.full(n, -1)
    dist = (1.0 - cosine_similarity_matrix(torch.from_numpy(features))).clamp_min(0.0)
    dist.fill_diagonal_(0.0)
    return HDBSCAN(min_cluster_size=min_cluster_size, min_samples=min_samples, metric="precomputed",
                   allow_single_cluster=single, copy=True).fit_predict(dist.numpy())


class FreqFed:
    def __init__(self, p: FreqFedParams):
        self.p = p
        self.offset, self.m, self.n = layer_slice(p.layer)

    def aggregate(self, updates: torch.Tensor, weights: torch.Tensor, ctx: AggregatorContext,
                  state: dict) -> Aggregate:
        from fl_core.models import NUM_PARAMS

        n, d = updates.shape
        if d != NUM_PARAMS:
            raise ValueError(f"FreqFed transforms a layer of the paper CNN ({NUM_PARAMS} parameters); got d = {d}")
        block = updates[:, self.offset: self.offset + self.m * self.n].reshape(n, self.m, self.n)
        feats = dct_features(block.cpu().numpy())
        majority = self.p.min_cluster_size is None
        mcs = n // 2 + 1 if majority else self.p.min_cluster_size
        labels = cluster(feats, max(mcs, 2), self.p.min_samples, single=majority)
        accepted = largest_cluster(labels)
        no_cluster = accepted is None
        if accepted is None:
            accepted = (True,) * n
        idx = torch.tensor([i for i in range(n) if accepted[i]], device=updates.device)
        delta = ordered_weighted_mean(updates[idx], weights[idx.cpu()])
        metrics = {**flag_metrics(accepted), "freqfed_clusters": len(set(labels.tolist()) - {-1}),
                   "freqfed_noise": int((labels < 0).sum()), "freqfed_no_cluster": int(no_cluster),
                   "freqfed_features": int(feats.shape[1])}
        return Aggregate(delta, metrics, accepted=accepted)


def label(p: FreqFedParams) -> str:
    mcs = [] if p.min_cluster_size == 2 else [f"mcs={p.min_cluster_size or 'majority'}"]
    parts = ([] if p.layer == "fc2" else [p.layer]) + mcs
    return "FreqFed" + (f" ({', '.join(parts)})" if parts else "")


SPEC = register(AggregatorSpec("freqfed", FreqFedParams, lambda p, cfg: FreqFed(p), label, check=check))
