"""FoolsGold (Fung et al. 2020, "The limitations of federated learning in sybil settings",
RAID): clients whose update HISTORIES point the same way are treated as sybils and
down-weighted. Each writer's history H_k is the sum of all its updates so far (kept in
`SimulationState.aggregator_state`, so a resumed run is bit-exact); per round, with cs the
cosine similarities of the cohort's histories (diagonal 0) and v_i = max_j cs_ij:
  pardoning   cs_ij ← cs_ij · v_i / v_j  where v_i < v_j,
  α_i = 1 − max_j cs_ij, clipped to [0, 1], divided by max_i α_i (ones become 0.99),
  logit       α_i ← κ·(ln(α_i / (1 − α_i)) + 0.5), clipped to [0, 1];
and the aggregate is Σ α_i w_i Δ_i / Σ w_i (w = the FedAvg weights): the paper's α-weighted
sum of updates, divided by the cohort's total weight so that α = 1 for all is FedAvg.
Choices where the paper leaves room (ours): histories cover the model's output layer (the
last Linear's weight and bias, 1,290 values; `features: all` takes every parameter, which
costs d floats per writer ever seen); the optional feature-importance weighting is not
applied; when every α is 0 (all histories identical) the aggregate is the zero update. A writer sampled twice in a round (sampling
with replacement) shares one history, so its two slots look like sybils of each other.
"""

from __future__ import annotations

from typing import Literal

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


class FoolsGoldParams(Params):
    kappa: float = Field(1.0, gt=0, description="κ: confidence of the logit (the paper's default 1)")
    features: Literal["output-layer", "all"] = Field(
        "output-layer", description="what each writer's history sums: the output layer's "
        "parameters, or all of them",
    )


def foolsgold_weights(histories: torch.Tensor, kappa: float) -> torch.Tensor:
    """[n] float64 α in [0, 1] from the cohort's histories [n, k] (Fung et al., Alg. 1)."""
    n = histories.shape[0]
    cs = cosine_similarity_matrix(histories)
    cs = cs - torch.eye(n, dtype=cs.dtype, device=cs.device)
    v = cs.max(dim=1).values
    lower = v[:, None] < v[None, :]  # pardon i against j when i is less sybil-like than j
    cs = torch.where(lower, cs * v[:, None] / torch.where(lower, v[None, :], torch.ones_like(cs)), cs)
    alpha = (1 - cs.max(dim=1).values).clamp(0, 1)
    top = alpha.max()
    if float(top) == 0.0:
        return alpha  # all zero: every history has an identical twin
    alpha = alpha / top
    alpha = torch.where(alpha == 1, torch.full_like(alpha, 0.99), alpha)
    return (kappa * (torch.log(alpha / (1 - alpha)) + 0.5)).clamp(0, 1)


def update_history(state: dict, clients: tuple[int, ...], feats: torch.Tensor) -> dict:
    """New state: every client's history plus this round's features (float64, CPU), rows
    sorted by client index (a pure function of the rounds so far)."""
    old = dict(zip(state["clients"].tolist(), state["history"])) if state else {}
    f64 = feats.to(torch.float64).cpu()
    for i, c in enumerate(clients):
        old[c] = old[c] + f64[i] if c in old else f64[i].clone()
    keys = sorted(old)
    return {"clients": torch.tensor(keys, dtype=torch.int64), "history": torch.stack([old[c] for c in keys])}


class FoolsGold:
    def __init__(self, kappa: float, num_features: int | None):
        self.kappa = kappa
        self.num_features = num_features  # the last k coordinates; None = all

    def aggregate(self, updates: torch.Tensor, weights: torch.Tensor, ctx: AggregatorContext,
                  state: dict) -> Aggregate:
        k = self.num_features
        feats = updates if k is None else updates[:, updates.shape[1] - k:]
        new_state = update_history(state, ctx.client_indices, feats)
        row = {c: i for i, c in enumerate(new_state["clients"].tolist())}
        hist = new_state["history"][[row[c] for c in ctx.client_indices]].to(updates.device)
        alpha = foolsgold_weights(hist, self.kappa).cpu()
        accepted = tuple(bool(a > 0) for a in alpha)
        metrics = {**flag_metrics(accepted), "fg_alpha_mean": float(alpha.mean()), "fg_alpha_min": float(alpha.min())}
        if not any(accepted):
            return Aggregate(torch.zeros(updates.shape[1], device=updates.device), metrics, new_state, accepted)
        delta = ordered_weighted_mean(updates, alpha * weights, total=float(weights.sum()))
        return Aggregate(delta, metrics, new_state, accepted)


def output_layer_size() -> int:
    """Parameters of the paper CNN's last Linear (weight + bias), the last ones of the
    flat vector (`fl_core.params.get_flat` follows `model.parameters()` order)."""
    from fl_core.params import cnn_param_slice

    (_, weight), (_, bias) = cnn_param_slice("fc2.weight"), cnn_param_slice("fc2.bias")
    return weight.numel() + bias.numel()


SPEC = register(AggregatorSpec(
    "foolsgold", FoolsGoldParams,
    lambda p, cfg: FoolsGold(p.kappa, output_layer_size() if p.features == "output-layer" else None),
    lambda p: "FoolsGold" + ("" if p.features == "output-layer" else f" ({p.features})"),
    per_client=True,
))
