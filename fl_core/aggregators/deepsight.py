"""DeepSight (Rieger, Nguyen, Miettinen and Sadeghi 2022, "DeepSight: mitigating backdoor
attacks in federated learning through deep model inspection", NDSS). Per round:
  1. NEUPs and threshold exceedings: with the update of the output layer (weights W [P, H],
     biases b [P]), the update energy of output neuron p is UP_p = |b_p| + Σ_h |W_ph|,
     NEUP_p = UP_p² / Σ_q UP_q², and TE = #{p : NEUP_p > ξ · max_q NEUP_q} with
     ξ = max(threshold_factor, 1/P). Few exceedings mean a model trained on few labels
     (a backdoor's homogeneous data): with the classification boundary median(TE)/2, an
     update with TE ≤ boundary is labelled suspicious.
  2. DDifs: for num_seeds sets of num_samples noise images x ~ U[0, 1)^(1×28×28),
     DDif_{i,s,p} = mean_x softmax(f_i(x))_p / softmax(f_G(x))_p with f_G the global model
     w_t and f_i = w_t + Δ_i the local one.
  3. The cosine distances 1 − cos(b_i, b_j) of the output-layer bias updates.
  4. Ensemble clustering: HDBSCAN on the cosine distances (precomputed), on the NEUPs and on
     each seed's DDifs (Euclidean); each clustering becomes a 0/1 matrix (0 = same cluster,
     a noise point shares a cluster with no one), their mean (the DDif seeds first averaged
     into one) is clustered once more (precomputed).
  5. A cluster is accepted when fewer than τ·|cluster| of its members are suspicious; a
     point HDBSCAN leaves as noise is a cluster of its own (accepted iff not suspicious).
  6. Accepted updates are clipped to S = the median L2 norm of ALL n updates, then averaged
     with their FedAvg weights.
The paper's defaults: 3 seeds × 20,000 noise images, τ = 1/3, ξ = max(0.01, 1/P).

Where the public implementations differ and what we follow (FLPoison = vio1etus/FLPoison
aggregators/deepsight.py @eb74fb2; BackFed = thinh-dao/BackFed backfed/servers/
deepsight_server.py @4f472ab; both read for this module):
- TE factor: FLPoison max(0.01, 1/P) with ">", BackFed 1/P with "≥": equal for P = 10 up to
  ties; we use the paper's max(0.01, 1/P) and ">" ("exceed"). Suspicious iff TE ≤
  median(TE)/2 in both; we follow them.
- HDBSCAN: FLPoison min_samples = 3 everywhere and allow_single_cluster on the last
  clustering; BackFed the hdbscan library's defaults (min_cluster_size 5, min_samples =
  min_cluster_size) everywhere. We follow BackFed (min_cluster_size = 5, min_samples unset),
  both parameters. We use scikit-learn's HDBSCAN (the same algorithm as the hdbscan package).
- Noise points: FLPoison's cluster-distance matrix puts all noise points in one cluster (−1
  == −1) and rejects final-noise points; BackFed keeps noise points apart and accepts a
  final-noise point iff it is not suspicious. We follow BackFed (noise = singleton clusters).
  (BackFed's cluster test counts the NON-suspicious members against τ, the reverse of the
  paper and of its own noise rule; we do not follow that.)
- Clip reference: the median norm of all n updates (FLPoison's and BackFed's all-client
  median; BackFed also scales the aggregate by a server η = 0.1, which we do not).
- DDif: both divide the models' raw outputs (logits for their CNNs; FLPoison adds 1e-6,
  BackFed 1e-30 to the denominator); we follow the paper's softmax probabilities, as
  exp(log_softmax_i − log_softmax_G), so no ε is needed. Both draw the same noise every
  round (a torch seed s reset each round); ours is drawn per round from Stream.AGG_NOISE keyed
  (round, 1, s) (an aggregator's own draws, as DnC's and SignGuard's).
Choices where neither says (ours): an all-zero output-layer update has NEUP = 0 and TE = 0;
no accepted update gives the zero update (the model is kept); log(p_i/p_G) is capped at 700
(LOG_RATIO_CAP) so a boosted update's DDif stays finite; the forward passes run in
eval mode (no dropout) with fl.threads intra-op threads, batches of 500. It needs the
round's global weights (`AggregatorContext.global_params`) and the paper CNN's layout.
"""

from __future__ import annotations

from typing import Iterable

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
    median_1d,
    register,
)
from fl_core.errors import ConfigError
from fl_core.rng import Stream, torch_generator

BATCH = 500  # noise images per forward pass: ~75 MB of conv2 activations on a CPU


class DeepSightParams(Params):
    num_samples: int = Field(20_000, ge=1, le=1_000_000, description="noise images per seed for the "
                             "DDifs (paper: 20,000; cost grows linearly, seeds × (n + 1) CNN passes each)")
    num_seeds: int = Field(3, ge=1, le=100, description="noise sets, each clustered on its own (paper: 3)")
    tau: float = Field(1 / 3, gt=0, le=1, description="τ: a cluster is accepted when fewer than τ of its "
                       "members are suspicious (paper: 1/3)")
    threshold_factor: float = Field(0.01, ge=0, lt=1, description="ξ floor: a NEUP exceeds the threshold "
                                    "max(ξ, 1/P) × the largest NEUP (paper: 0.01)")
    min_cluster_size: int = Field(5, ge=2, description="HDBSCAN min_cluster_size of every clustering "
                                  "(BackFed: the hdbscan library's 5)")
    min_samples: int | None = Field(None, ge=1, description="HDBSCAN min_samples; null = min_cluster_size "
                                    "(BackFed: library default; FLPoison: 3)")


def check(p: DeepSightParams, cfg) -> None:
    n = cfg.fl.clients_per_round
    if p.min_cluster_size > n:
        raise ConfigError("defense.aggregator_params.min_cluster_size", p.min_cluster_size,
                          f"at most fl.clients_per_round = {n} (HDBSCAN could never form a cluster)")
    if p.min_samples is not None and p.min_samples > n:
        raise ConfigError("defense.aggregator_params.min_samples", p.min_samples,
                          f"at most fl.clients_per_round = {n}")


def output_layer(updates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(W [n, P, H], b [n, P]) float64: the paper CNN's last Linear, the last P·H + P
    coordinates of the flat vector (weight row-major, then bias; `model.parameters()` order)."""
    from fl_core.params import cnn_param_slice

    (w_off, (p, h)), (b_off, _) = cnn_param_slice("fc2.weight"), cnn_param_slice("fc2.bias")
    w = updates[:, w_off: w_off + p * h].to(torch.float64).reshape(-1, p, h)
    return w, updates[:, b_off: b_off + p].to(torch.float64)


def neups_and_tes(w: torch.Tensor, b: torch.Tensor, threshold_factor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """NEUPs [n, P] float64 and threshold exceedings [n] int64 of output-layer updates
    (W [n, P, H], b [n, P]); a zero update has NEUP 0 and TE 0."""
    up = b.abs() + w.abs().sum(dim=2)
    energy = up * up
    total = energy.sum(dim=1, keepdim=True)
    neup = torch.where(total > 0, energy / torch.where(total > 0, total, torch.ones_like(total)), 0.0)
    xi = max(threshold_factor, 1.0 / neup.shape[1])
    top = neup.max(dim=1, keepdim=True).values
    te = (neup > xi * top).sum(dim=1)
    return neup, te


def suspicious_labels(te: torch.Tensor) -> tuple[bool, ...]:
    """TE ≤ median(TE)/2 (the classification boundary; median of an even count = mean of
    the middle two)."""
    boundary = median_1d(te.to(torch.float64)) / 2
    return tuple(bool(t <= boundary) for t in te.tolist())


def hdbscan_labels(x: np.ndarray, precomputed: bool, min_cluster_size: int, min_samples: int | None) -> np.ndarray:
    """HDBSCAN labels (−1 = noise); all noise when there are fewer rows than it needs."""
    from sklearn.cluster import HDBSCAN  # lazy: only the clustering rules need scikit-learn

    n = x.shape[0]
    if n < max(min_cluster_size, min_samples or min_cluster_size):
        return np.full(n, -1)
    return HDBSCAN(min_cluster_size=min_cluster_size, min_samples=min_samples,
                   metric="precomputed" if precomputed else "euclidean", copy=True).fit_predict(x)


def cluster_dists(labels: np.ndarray) -> np.ndarray:
    """[n, n]: 0 for two members of one cluster (and on the diagonal), else 1; a noise point
    shares a cluster with no one."""
    same = (labels[:, None] == labels[None, :]) & (labels[:, None] >= 0)
    d = np.where(same, 0.0, 1.0)
    np.fill_diagonal(d, 0.0)
    return d


def accept_clusters(labels: np.ndarray, suspicious: tuple[bool, ...], tau: float) -> tuple[bool, ...]:
    """A cluster is accepted when #suspicious < τ·|cluster|; a noise point is its own cluster."""
    sus = np.asarray(suspicious, dtype=bool)
    out = np.zeros(len(labels), dtype=bool)
    for lab in np.unique(labels):
        if lab < 0:
            noise = labels == lab
            out[noise] = ~sus[noise]
        else:
            members = labels == lab
            out[members] = int(sus[members].sum()) < tau * int(members.sum())
    return tuple(bool(a) for a in out)


def noise_inputs(ctx: AggregatorContext, s: int, num: int) -> torch.Tensor:
    """Seed s's noise images [num, 1, 28, 28] ~ U[0, 1) (the CNN's pixel range)."""
    gen = torch_generator(ctx.seed, Stream.AGG_NOISE, ctx.round_idx, 1, s)
    return torch.rand(num, 1, 28, 28, generator=gen, dtype=torch.float32)


#: cap on log(p_i/p_G): a boosted update can push a ratio past float64's range (e^709), and
#: one inf would stop HDBSCAN; e^700 keeps every DDif finite and still far out.
LOG_RATIO_CAP = 700.0


@torch.no_grad()
def ddifs(model: torch.nn.Module, global_params: torch.Tensor, updates: torch.Tensor,
          noises: Iterable[torch.Tensor]) -> np.ndarray:
    """[seeds, n, P] float64: mean over each noise set (an iterable, consumed once) of
    softmax(local)/softmax(global), as exp(log_softmax_i − log_softmax_G): log-softmax in
    float32, the difference (capped at LOG_RATIO_CAP), exp and sum in float64."""
    from fl_core.params import set_flat

    model.eval()
    dev = updates.device
    out = []
    for x in noises:
        x = x.to(dev)
        set_flat(model, global_params)
        log_g = torch.cat([torch.log_softmax(model(x[k:k + BATCH]), dim=1) for k in range(0, len(x), BATCH)])
        rows = []
        for i in range(updates.shape[0]):
            set_flat(model, global_params + updates[i])
            acc = torch.zeros(log_g.shape[1], dtype=torch.float64, device=dev)
            for k in range(0, len(x), BATCH):
                log_ratio = (torch.log_softmax(model(x[k:k + BATCH]), dim=1) - log_g[k:k + BATCH]).to(torch.float64)
                acc += torch.exp(log_ratio.clamp(max=LOG_RATIO_CAP)).sum(dim=0)
            rows.append(acc / len(x))
        out.append(torch.stack(rows).cpu().numpy())
    return np.stack(out)


def ensemble_labels(cos_dist: np.ndarray, neups: np.ndarray, dd: np.ndarray, mcs: int,
                    ms: int | None) -> tuple[np.ndarray, dict]:
    """The final clustering of step 4 and the counts of clusters each clustering found."""
    cos_l = hdbscan_labels(cos_dist, True, mcs, ms)
    neup_l = hdbscan_labels(neups, False, mcs, ms)
    dd_l = [hdbscan_labels(dd[s], False, mcs, ms) for s in range(dd.shape[0])]
    merged = np.mean([np.mean([cluster_dists(lab) for lab in dd_l], axis=0),
                      cluster_dists(neup_l), cluster_dists(cos_l)], axis=0)
    final = hdbscan_labels(merged, True, mcs, ms)
    count = lambda lab: int(len(set(lab.tolist()) - {-1}))  # noqa: E731
    return final, {"deepsight_cos_clusters": count(cos_l), "deepsight_neup_clusters": count(neup_l),
                   "deepsight_ddif_clusters": float(np.mean([count(lab) for lab in dd_l])),
                   "deepsight_clusters": count(final), "deepsight_noise": int((final < 0).sum())}


def clip_mean(updates: torch.Tensor, weights: torch.Tensor, accepted: tuple[bool, ...]) -> tuple[torch.Tensor, float]:
    """(aggregate, S): the accepted updates scaled by min(1, S/‖Δ_i‖), S = the median norm
    of ALL rows, averaged with their FedAvg weights; the zero update when none is accepted."""
    norms = torch.linalg.vector_norm(updates.to(torch.float64), dim=1)
    s = median_1d(norms)
    keep = [i for i in range(updates.shape[0]) if accepted[i]]
    if not keep:
        return torch.zeros(updates.shape[1], device=updates.device), s
    scale = torch.where(norms > s, s / norms.clamp_min(torch.finfo(torch.float64).tiny), torch.ones_like(norms))
    idx = torch.tensor(keep, device=updates.device)
    clipped = (updates[idx].to(torch.float64) * scale[idx][:, None]).to(torch.float32)
    return ordered_weighted_mean(clipped, weights[idx.cpu()]), s


class DeepSight:
    def __init__(self, p: DeepSightParams, threads: int):
        self.p, self.threads = p, threads

    def aggregate(self, updates: torch.Tensor, weights: torch.Tensor, ctx: AggregatorContext,
                  state: dict) -> Aggregate:
        from fl_core.models import CNN, NUM_PARAMS
        from fl_core.training import torch_threads

        n, d = updates.shape
        if ctx.global_params is None:
            raise ValueError("DeepSight runs the global and local models on noise: "
                             "AggregatorContext.global_params must be passed (fl_core.round)")
        if d != NUM_PARAMS:
            raise ValueError(f"DeepSight inspects the paper CNN ({NUM_PARAMS} parameters); got d = {d}")
        p = self.p
        w, b = output_layer(updates)
        neups, te = neups_and_tes(w, b, p.threshold_factor)
        suspicious = suspicious_labels(te)
        cos_dist = (1.0 - cosine_similarity_matrix(b)).clamp_min(0.0)
        cos_dist.fill_diagonal_(0.0)
        noises = (noise_inputs(ctx, s, p.num_samples) for s in range(p.num_seeds))  # one set in memory at a time
        with torch_threads(self.threads):
            with torch.device("meta"):
                model = CNN()
            model = model.to_empty(device=updates.device)  # every weight is set from w_t + Δ_i
            dd = ddifs(model, ctx.global_params.to(updates.device), updates, noises)
        labels, counts = ensemble_labels(cos_dist.cpu().numpy(), neups.cpu().numpy(), dd,
                                         p.min_cluster_size, p.min_samples)
        accepted = accept_clusters(labels, suspicious, p.tau)
        delta, s = clip_mean(updates, weights, accepted)
        metrics = {**flag_metrics(accepted), **counts, "deepsight_suspicious": sum(suspicious),
                   "deepsight_te_median": median_1d(te.to(torch.float64)), "deepsight_median_norm": s}
        return Aggregate(delta, metrics, accepted=accepted)


def label(p: DeepSightParams) -> str:
    return "DeepSight" + ("" if p.num_samples == 20_000 else f" N={p.num_samples}")


SPEC = register(AggregatorSpec(
    "deepsight", DeepSightParams, lambda p, cfg: DeepSight(p, cfg.fl.threads), label, check=check,
))
