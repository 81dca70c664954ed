"""FLDetector (Zhang, Fang, Liu, Chen and Gong 2022, "FLDetector: defending federated
learning against model poisoning attacks via detecting malicious clients", KDD): a benign
client's update is predictable from its previous one and the model's move,
    ĝ_t^i = g_τ^i + Ĥ_t (w_t − w_τ),
where Ĥ_t is the L-BFGS approximation of the Hessian built from the last N pairs
(s, y) = (w_k − w_{k−1}, g_k − g_{k−1}) of global-model and aggregate differences (the
compact form of Byrd, Nocedal and Schnabel 1994, as the authors' `lbfgs`). A client's score
is the window mean of its normalized distances ‖ĝ − g‖; the gap statistic decides whether
the scores have more than one cluster, and if so KMeans(2) splits them and the high-score
cluster is dropped. The kept updates are averaged with the FedAvg weights (`defense.weighting`).

Authors' code: zaixizhang/FLDetector `train_mnist.py` (`lbfgs`, `detection1`: N = 10 pairs,
detection from round 50, 10 uniform reference sets, k ≤ 7) and `nd_aggregation.py`
(distance / Σ distance). Defaults are theirs; our short runs attack after a 30-round warm-up,
so grids set `start_round` (≤ 30) for the detector to be active when the attack starts.
Where we follow the code, differ, or choose:
- Updates Δ = local − global (not gradients): Δ ≈ −η g, and the L-BFGS B(s, y) is
  homogeneous, B(s, −c y) = −c B(s, y), so predicting Δ from Δ-pairs equals predicting g
  and scaling; nothing else changes.
- Partial participation (ours; the paper has every client in every round): a client's
  prediction uses ITS last update g_τ^i and the model it was computed on, w_τ (τ = the round
  it was last sampled; τ = t−1 gives the paper's formula). BackFed (`fldetector_server.py`)
  pairs the previous round's list by position, which under sampling predicts one client
  from another. A client never seen before gets no score this round and is kept.
- Normalization: a round's distances are divided by their mean (n·d_i/Σd, the authors'
  d_i/Σd times n): the number of scored clients varies with sampling and the window mixes
  rounds; under full participation this is a constant factor, which neither the min-max
  normalized gap statistic nor KMeans sees.
- Window: the last N scores of each client (per client, as BackFed), not the last N rounds.
- Detection runs on the round's scored rows (≥ 3), not on all clients; flagged updates are
  dropped from this round only. The paper (and BackFed) instead remove the flagged clients
  for good and restart training from the initial model, which an aggregator cannot do.
- Y pairs use the aggregate this rule returned (the kept mean, as BackFed; the authors'
  `simple_mean` averages everyone since their detection runs offline).
- Gap statistic: the authors' (min-max normalized scores, uniform [0, 1] references,
  W_k the within-cluster sum of squares); their loop has no k when no gap difference is
  ≥ 0, we take the largest k tried. Randomness: the references and KMeans seeds come from
  the round's AGG_NOISE stream. k ≤ min(7, n−1, distinct scores).
- `features: output-layer` (default, as FoolsGold here): S, Y and the per-client history
  cover the CNN's last Linear only (1,290 values), so Ĥ is that block of the Hessian and the
  state is ≤ 2·1,290 floats per writer ever seen; `all` is the paper's full vector and costs
  2·d floats per writer ever seen plus 2·N·d float64 for S, Y (state is checkpointed).
- A writer sampled twice in a round (with replacement): both slots are predicted from its
  state before the round, both scores enter its window, the second slot's update is kept.
FLPoison (`aggregators/fldetector.py` @02bf62b) is not followed: it multiplies Ĥ by the last
aggregate instead of w_t − w_{t−1}, and its gap loop returns k + 1 (never 1), so it always
splits; it pairs clients by position as BackFed does.
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
    flag_metrics,
    register,
)
from fl_core.rng import Stream, derive_seed, numpy_rng


class FLDetectorParams(Params):
    window: int = Field(10, ge=1, le=1000, description="N: (s, y) pairs kept for L-BFGS and scores "
                        "kept per client (the authors' 10)")
    start_round: int = Field(50, ge=0, description="first 0-based round that scores and detects "
                             "(the authors' 50; before it history is only collected)")
    refs: int = Field(10, ge=1, le=1000, description="uniform reference sets of the gap statistic "
                      "(the authors' 10)")
    max_k: int = Field(7, ge=2, le=100, description="largest cluster count the gap statistic "
                       "tries (the authors' 7)")
    features: Literal["output-layer", "all"] = Field(
        "output-layer", description="coordinates the history and prediction use: the output "
        "layer's parameters (bounded state), or all of them (the paper)")


def lbfgs_hvp(S: torch.Tensor, Y: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """B V for the L-BFGS matrix B of the pairs S, Y [m, f] (oldest first, float64) applied
    to the rows of V [n, f]: the compact form B = σI − [σS Y] M⁻¹ [σSᵀ; Yᵀ],
    M = [[σSᵀS, L], [Lᵀ, −D]], L the strictly lower part of SᵀY, D its diagonal,
    σ = y_m·s_m / s_m·s_m (the authors' `lbfgs`, which inverts M; we solve)."""
    Sc, Yc = S.T, Y.T  # [f, m] columns, as the paper
    sy = Sc.T @ Yc
    ss = Sc.T @ Sc
    L = torch.tril(sy, diagonal=-1)
    D = torch.diag(torch.diagonal(sy))
    sigma = float(Y[-1] @ S[-1]) / float(S[-1] @ S[-1])
    M = torch.cat([torch.cat([sigma * ss, L], 1), torch.cat([L.T, -D], 1)], 0)
    Vc = V.T  # [f, n]
    P = torch.cat([sigma * (Sc.T @ Vc), Yc.T @ Vc], 0)  # [2m, n]
    out = sigma * Vc - torch.cat([sigma * Sc, Yc], 1) @ torch.linalg.solve(M, P)
    return out.T


def gap_statistic(scores: np.ndarray, refs: int, max_k: int, seed: int) -> int:
    """The number of clusters k the gap statistic picks for 1-d `scores` (the authors'
    `detection1`): the first k with Gap(k) ≥ Gap(k+1) − s_{k+1}; 1 when all scores are equal."""
    from sklearn.cluster import KMeans  # lazy: config validation does not need scikit-learn

    lo, hi = float(scores.min()), float(scores.max())
    distinct = len(np.unique(scores))
    k_max = min(max_k, len(scores) - 1, distinct)
    if hi == lo or k_max < 2:
        return 1
    x = (scores - lo) / (hi - lo)
    rng = np.random.default_rng(seed)

    def wk(v: np.ndarray, k: int) -> float:
        km = KMeans(n_clusters=k, n_init=10, random_state=int(rng.integers(2**31 - 1))).fit(v.reshape(-1, 1))
        return float(np.sum((v - km.cluster_centers_[km.labels_, 0]) ** 2))

    ks = range(1, k_max + 1)
    gaps, sdk = np.zeros(len(ks)), np.zeros(len(ks))
    with np.errstate(divide="ignore", invalid="ignore"):
        for i, k in enumerate(ks):
            w = wk(x, k)
            ref = np.array([wk(rng.uniform(0, 1, len(x)), k) for _ in range(refs)])
            gaps[i] = np.log(np.mean(ref)) - np.log(w)
            sdk[i] = np.sqrt((1.0 + refs) / refs) * np.std(np.log(ref))
            if i > 0 and gaps[i - 1] - gaps[i] + sdk[i] >= 0:
                return ks[i - 1]
    return ks[-1]


def kmeans_high_cluster(scores: np.ndarray, seed: int) -> np.ndarray:
    """Boolean mask of the KMeans(2) cluster with the higher mean score."""
    from sklearn.cluster import KMeans

    labels = KMeans(n_clusters=2, n_init=10, random_state=seed).fit(scores.reshape(-1, 1)).labels_
    high = 1 if scores[labels == 1].mean() > scores[labels == 0].mean() else 0
    return labels == high


def _window_append(row: torch.Tensor, count: int, value: float) -> tuple[torch.Tensor, int]:
    """The client's last N scores (oldest first, the last `count` filled, zeros before:
    no NaN, so torch.equal compares states) with `value` appended."""
    return torch.cat([row[1:], torch.tensor([value], dtype=torch.float64)]), min(count + 1, row.numel())


class FLDetector:
    def __init__(self, p: FLDetectorParams, num_features: int | None):
        self.p = p
        self.num_features = num_features  # the last k coordinates; None = all

    def _feats(self, x: torch.Tensor) -> torch.Tensor:
        k = self.num_features
        return x if k is None or k >= x.shape[-1] else x[..., x.shape[-1] - k:]  # a toy model: all

    def aggregate(self, updates: torch.Tensor, weights: torch.Tensor, ctx: AggregatorContext,
                  state: dict) -> Aggregate:
        if ctx.global_params is None:
            raise ValueError("FLDetector predicts from the round's global weights: AggregatorContext."
                             "global_params is None")
        p, n = self.p, updates.shape[0]
        g = self._feats(updates).detach().to("cpu", torch.float32)
        w = self._feats(ctx.global_params).detach().to("cpu", torch.float32)
        f = g.shape[1]
        clients = state["clients"].tolist() if state else []
        row_of = {c: i for i, c in enumerate(clients)}
        c_upd = state["client_update"] if state else torch.zeros(0, f)
        c_w = state["client_weight"] if state else torch.zeros(0, f)
        c_sc = state["scores"] if state else torch.zeros(0, p.window, dtype=torch.float64)
        c_n = state["score_count"].tolist() if state else []
        S = state["S"] if state else torch.zeros(0, f, dtype=torch.float64)
        Y = state["Y"] if state else torch.zeros(0, f, dtype=torch.float64)

        # 1. score the rows whose client has a previous update
        seen = [i for i, c in enumerate(ctx.client_indices) if c in row_of]
        new_scores: dict[int, float] = {}
        active = ctx.round_idx >= p.start_round and S.shape[0] > 0 and len(seen) > 0
        if active:
            rows = [row_of[ctx.client_indices[i]] for i in seen]
            prev = c_upd[rows].to(torch.float64)
            pred = prev + lbfgs_hvp(S, Y, w.to(torch.float64)[None, :] - c_w[rows].to(torch.float64))
            dist = torch.linalg.vector_norm(pred - g[seen].to(torch.float64), dim=1)
            total = float(dist.sum())
            for j, i in enumerate(seen):
                new_scores[i] = float(dist[j]) * len(seen) / total if total > 0 else 1.0

        # 2. per-client history: last update, the model it was computed on, score window
        table = {c: (c_upd[r], c_w[r], c_sc[r], c_n[r]) for c, r in row_of.items()}
        empty = torch.zeros(p.window, dtype=torch.float64)
        for i, c in enumerate(ctx.client_indices):
            sc, cnt = (table[c][2], table[c][3]) if c in table else (empty, 0)
            if i in new_scores:
                sc, cnt = _window_append(sc, cnt, new_scores[i])
            table[c] = (g[i].clone(), w.clone(), sc, cnt)

        # 3. detection on the round's rows with a score window: its mean
        windows = {i: table[c] for i, c in enumerate(ctx.client_indices)}
        scored = [i for i in range(n) if active and windows[i][3] > 0]
        accepted = [True] * n
        k = 1
        if len(scored) >= 3:
            s = np.array([float(windows[i][2][-windows[i][3]:].sum()) / windows[i][3] for i in scored])
            seed = derive_seed(ctx.seed, Stream.AGG_NOISE, ctx.round_idx)
            k = gap_statistic(s, p.refs, p.max_k, seed)
            if k > 1:
                high = kmeans_high_cluster(s, int(numpy_rng(ctx.seed, Stream.AGG_NOISE, ctx.round_idx, 1)
                                                  .integers(2**31 - 1)))
                for j, i in enumerate(scored):
                    accepted[i] = not bool(high[j])
        keep = [i for i in range(n) if accepted[i]]
        idx = torch.tensor(keep, dtype=torch.long, device=updates.device)
        delta = ordered_weighted_mean(updates.index_select(0, idx), weights[keep])

        # 4. the (s, y) pair of this round: model move since the last round, aggregate move
        agg = self._feats(delta).detach().to("cpu", torch.float32)
        if state and "last_weight" in state:
            S = torch.cat([S, (w.to(torch.float64) - state["last_weight"].to(torch.float64))[None]])[-p.window:]
            Y = torch.cat([Y, (agg.to(torch.float64) - state["last_agg"].to(torch.float64))[None]])[-p.window:]
        keys = sorted(table)
        new_state = {
            "clients": torch.tensor(keys, dtype=torch.int64),
            "client_update": torch.stack([table[c][0] for c in keys]),
            "client_weight": torch.stack([table[c][1] for c in keys]),
            "scores": torch.stack([table[c][2] for c in keys]),
            "score_count": torch.tensor([table[c][3] for c in keys], dtype=torch.int64),
            "S": S, "Y": Y, "last_weight": w.clone(), "last_agg": agg.clone(),
        }
        acc = tuple(accepted)
        metrics = {**flag_metrics(acc), "fld_scored": len(scored), "fld_k": k,
                   "fld_attack": int(k > 1)}
        return Aggregate(delta, metrics, new_state, acc)


def build(p: FLDetectorParams, cfg) -> FLDetector:
    from fl_core.aggregators.foolsgold import output_layer_size

    return FLDetector(p, output_layer_size() if p.features == "output-layer" else None)


SPEC = register(AggregatorSpec(
    "fldetector", FLDetectorParams, build,
    lambda p: f"FLDetector N={p.window}" + ("" if p.features == "output-layer" else f" ({p.features})"),
    per_client=True,
))
