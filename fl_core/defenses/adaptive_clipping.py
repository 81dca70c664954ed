"""Adaptive clipping (Andrew, Thakkar, McMahan, Ramaswamy, NeurIPS 2021, "Differentially
Private Learning with Adaptive Clipping"): the clipping bound follows a target quantile γ
of the update norms instead of staying at a fixed M. In round t, with C_t the bound in force
and m = C·K the cohort size:

    b_i = 1[‖Δ_i‖₂ ≤ C_t]                          (update i is unclipped)
    Δ_i ← Δ_i / max(1, ‖Δ_i‖₂ / C_t)               (clipped as norm clipping)
    b̄   = clamp((Σ_i (b_i − ½) + N(0, σ_b²)) / m + ½, 0, 1)
    C_{t+1} = C_t · exp(−η_C (b̄ − γ))              (the geometric update)

With weak DP on (`defense.noise_sigma` σ > 0) the mean update gets Gaussian noise of std
z_Δ · C_t / m per coordinate, where z is the noise multiplier σ gives at the initial bound
C₀ = `defense.norm_bound` (σ/C₀ on the sum, σ·m/C₀ on the mean) and
z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2): the update query and the count query (sensitivity ½, so
multiplier 2σ_b) together are one Gaussian mechanism of multiplier z (the paper's
Theorem 1), so (ε, δ) are those of the configured noise (`sweeper/report/privacy.py`).

Defaults (`fl_core.config.DefenseConfig`): γ = 0.5 and η_C = 0.2 (the paper; TF-Privacy's
and Flower's defaults); σ_b = m/20 (the paper, TF-Privacy).

Where we follow code over the paper's text, or choose between implementations:
- The count (TF-Privacy's `QuantileEstimatorQuery`): it sums b_i − ½ (so one update moves
  it by ½, the sensitivity the accounting uses), divides by the expected cohort size m, adds
  ½ back and clamps b̄ to [0, 1]. With the full cohort of m this is the paper's
  (Σ b_i + N(0, σ_b²))/m; the clamp is post-processing and costs no privacy.
- The noise of round t scales with C_t, the bound that round's updates were clipped to (the
  paper's algorithm: σ_Δ = z_Δ C^t; TF-Privacy's `QuantileAdaptiveClipSumQuery` replaces its
  sum query's state only after the noised result). Flower's
  `DifferentialPrivacyServerSideAdaptiveClipping` noises with the already updated C_{t+1},
  which does not match the round's sensitivity; we do not follow it.
- σ_b when unset: m/20 with weak DP on, 0 without (TFF's `adaptive_clip_noise_params`,
  Flower's `compute_adaptive_noise_params`): without DP the count's noise only slows the
  adaptation.
- C₀ has no default: it is `defense.norm_bound`. Flower's docstring recommends 0.1 after the
  paper; this project's CNN has benign update norms of ~1–2 (NOTES.md), and while no update
  is unclipped the bound grows by at most e^{η_C γ} = e^{0.1} per round, so from 0.1 it
  over-clips for ~ln(15)/0.1 ≈ 27 rounds. Starting at the fixed bound an experiment would
  otherwise use (the paper's M = 3) it reaches the median in ~ln 2/0.1 ≈ 7 rounds.

The bound is state across rounds: `SimulationState.defense_state["clip_bound"]` (a float64
CPU scalar, checkpointed), read by `begin_round` (C₀ when absent: round 0, a warm start).
Randomness: the count's noise from `Stream.CLIP_COUNT`, the update noise from
`Stream.DP_NOISE` (as weak DP's), both keyed by round. A PGD attacker still projects onto
the configured `defense.norm_bound` (C₀), not onto the round's C_t.
"""

from __future__ import annotations

import math
from typing import Mapping

import torch

from fl_core.config import adaptive_clip_noise
from fl_core.defenses.base import AggregateContext, DefenseSpec, register
from fl_core.defenses.norm_clipping import clip_l2
from fl_core.defenses.weak_dp import dp_noise
from fl_core.errors import CheckpointError
from fl_core.rng import Stream, numpy_rng
from fl_core.types import Delta

STATE_KEY = "clip_bound"


def unclipped_share(unclipped: int, n: int, expected: int, noise: float) -> float:
    """b̄: the noisy share of unclipped updates, TF-Privacy's way (module docstring).

    Args:
        unclipped: Σ b_i over the n updates of the round.
        expected: m, the cohort size the share divides by (fixed, for the DP analysis).
        noise: the count's Gaussian draw, std σ_b.
    """
    return min(1.0, max(0.0, ((unclipped - n / 2) + noise) / expected + 0.5))


def next_bound(bound: float, share: float, quantile: float, lr: float) -> float:
    """C_{t+1} = C_t · exp(−η_C (b̄ − γ)): above the target share the bound shrinks."""
    return bound * math.exp(-lr * (share - quantile))


class AdaptiveClipping:
    """The registered defense: the settings. Each round works on its own `AdaptiveRound`
    (`begin_round`), so this object never changes between rounds."""

    def __init__(self, initial_bound: float, quantile: float, lr: float, count_noise: float,
                 update_noise_multiplier: float, clients_per_round: int):
        self.initial_bound, self.quantile, self.lr = initial_bound, quantile, lr
        self.count_noise, self.z_update, self.m = count_noise, update_noise_multiplier, clients_per_round

    def begin_round(self, defense_state: Mapping[str, torch.Tensor]) -> "AdaptiveRound":
        t = defense_state.get(STATE_KEY)
        if t is None:
            return AdaptiveRound(self, self.initial_bound)
        if t.numel() != 1 or t.dtype != torch.float64 or not float(t) > 0:
            raise CheckpointError("(the resumed state)", f"`defense_state.{STATE_KEY}` must be one "
                                  f"positive float64 (found {t.dtype}, shape {tuple(t.shape)})")
        return AdaptiveRound(self, float(t))


class AdaptiveRound:
    """One round: clips at the bound in force, counts the unclipped updates, then (in
    `on_aggregate`) adds the update noise and computes the next bound."""

    def __init__(self, spec: AdaptiveClipping, bound: float):
        self.spec, self.bound = spec, bound
        self.n = self.unclipped = 0
        self.bound_after: float | None = None

    def on_client(self, delta: Delta) -> tuple[Delta, dict]:
        clipped, norm = clip_l2(delta, self.bound)
        below = norm <= self.bound
        self.n += 1
        self.unclipped += int(below)
        # per client 1 or 0 as norm clipping's: the round averages it into the clipped share
        return clipped, {"clip_fraction": float(not below)}

    def on_aggregate(self, mean: Delta, ctx: AggregateContext) -> tuple[Delta, dict]:
        s = self.spec
        noise = 0.0
        if s.count_noise > 0:
            noise = s.count_noise * float(numpy_rng(ctx.seed, Stream.CLIP_COUNT, ctx.round_idx).standard_normal())
        share = unclipped_share(self.unclipped, self.n, s.m, noise)
        self.bound_after = next_bound(self.bound, share, s.quantile, s.lr)
        metrics = {"clip_bound": self.bound, "clip_unclipped_share": share}
        if s.z_update > 0:
            # the sum's noise std is z_Δ·C_t (the round's bound, not the next one); the mean's
            # is that over the cohort, as weak DP's placement `sum`
            std = s.z_update * self.bound / ctx.cohort_size
            draw = dp_noise(mean.shape, ctx)
            assert draw.shape == mean.shape  # one draw per coordinate, nothing broadcast
            mean = mean + std * draw.to(mean.device)
            metrics["noise_std_on_mean"] = std
        return mean, metrics

    def end_round(self) -> dict[str, torch.Tensor]:
        assert self.bound_after is not None, "end_round before on_aggregate"
        return {STATE_KEY: torch.tensor(self.bound_after, dtype=torch.float64)}


def build(config) -> AdaptiveClipping:
    d = config.defense
    count_noise, z_update = adaptive_clip_noise(config)
    return AdaptiveClipping(d.norm_bound, d.clip_quantile, d.clip_lr, count_noise, z_update,
                            config.fl.clients_per_round)


register(DefenseSpec("adaptive-clipping", lambda cfg: cfg.defense.clip_quantile is not None, build, order=0))
