"""CRFL (Xie, Chen, Chen, Li, ICML 2021, "CRFL: Certifiably Robust Federated Learning against
Backdoor Attacks"), training side: after aggregation the server clips the norm of the GLOBAL
MODEL to ρ_t and adds N(0, σ²) to every parameter, each round:

    w_{t+1} = clip(w_t + η·Δ̄_t, ρ_t) + N(0, σ² I),   ρ_t = min(slope·t + offset, cap),

t the 1-based round (our round_idx + 1). The test-time half (the smoothed model's vote and its
certified radius) is `fl_core.certify`.

Defaults (`fl_core.config.CRFL_DEFAULTS`): the authors' MNIST settings, AI-secure/CRFL
(commit 549eb53) `configs/mnist_params.yaml` (σ = `sigma_param` 0.01, cap = `param_clip_thres`
15) and `main.py` (ρ_t = `epoch*0.1+2` for MNIST, `epoch` counted from 1).

Where we follow the authors' code, or differ:
- The clip is the global model's (their `main.py` → `helper.clip_weight_norm(target_model,
  ·)`), not the aggregated update's as FLPoison's `crfl.py` does (bound 3, σ = 0.001).
- The clip is theirs: w·ρ/(‖w‖+1e-6) only when ‖w‖ > ρ (`clip_weight_norm`), the norm over
  all parameters (our flat vector is exactly the CNN's parameters; it has no buffers).
- The noise is added after the round's evaluation in their `main.py` (they test the clipped,
  un-noised model, and the noise goes into the next round's start). Here the noised model is
  the round's global model: it is what is evaluated, checkpointed and sent to clients; the
  training trajectory is the same.
- The defense works through the update protocol: it returns Δ' = (target − w_t)/η, computed in
  float64, so the round's w_t + η·Δ' is the target up to float32 rounding of that sum (at
  most one ulp of the target per coordinate; tests/fl_core/test_zoo2_crfl.py derives it).
- Weighting is left to `defense.weighting` (CRFL does not switch the uniform mean on).
Randomness: one full flat N(0, 1) draw from `Stream.CRFL` keyed (round_idx, 0), float32, CPU.
"""

from __future__ import annotations

import torch

from fl_core.defenses.base import AggregateContext, DefenseSpec, register
from fl_core.rng import Stream, torch_generator
from fl_core.types import Delta

CLIP_EPS = 1e-6  # the authors' clip_coef = max_norm / (total_norm + 1e-6)


def rho_t(t: int, slope: float, offset: float, cap: float) -> float:
    """ρ_t = min(slope·t + offset, cap), t the 1-based round (authors' `epoch`)."""
    return min(slope * t + offset, cap)


def clip_global(w: torch.Tensor, rho: float) -> tuple[torch.Tensor, float]:
    """The authors' `clip_weight_norm`: w·ρ/(‖w‖+1e-6) when ‖w‖ > ρ, else w; (result, ‖w‖).
    The norm and the product in float64, the result in w's dtype."""
    norm = float(torch.linalg.vector_norm(w.double()))
    if norm > rho:
        return (w.double() * (rho / (norm + CLIP_EPS))).to(w.dtype), norm
    return w, norm


def crfl_noise(shape: torch.Size, seed: int, round_idx: int) -> torch.Tensor:
    """The round's N(0, 1) draw on the global model (float32, CPU)."""
    return torch.randn(shape, generator=torch_generator(seed, Stream.CRFL, round_idx, 0), dtype=torch.float32)


class CRFL:
    def __init__(self, sigma: float, slope: float, offset: float, cap: float):
        self.sigma, self.slope, self.offset, self.cap = sigma, slope, offset, cap

    def on_client(self, delta: Delta) -> tuple[Delta, dict]:
        return delta, {}

    def new_global(self, w: torch.Tensor, mean: Delta, ctx: AggregateContext) -> tuple[torch.Tensor, dict]:
        """clip(w + η·mean, ρ_t) + σ·noise, and the metrics."""
        rho = rho_t(ctx.round_idx + 1, self.slope, self.offset, self.cap)
        clipped, norm = clip_global(w + ctx.server_lr * mean, rho)
        noise = crfl_noise(w.shape, ctx.seed, ctx.round_idx)
        assert noise.shape == w.shape  # one draw per parameter, nothing broadcast
        return clipped + self.sigma * noise, {"crfl_rho": rho, "crfl_global_norm": norm, "crfl_clipped": float(norm > rho)}

    def on_aggregate(self, mean: Delta, ctx: AggregateContext) -> tuple[Delta, dict]:
        if ctx.global_params is None:
            raise ValueError("CRFL acts on the global model: AggregateContext.global_params is needed")
        w = ctx.global_params.to("cpu", torch.float32)
        target, metrics = self.new_global(w, mean.to("cpu", torch.float32), ctx)
        # the update the round applies (w + η·Δ'), in float64 so the only rounding left is the round's sum
        delta = ((target.double() - w.double()) / ctx.server_lr).to(torch.float32)
        return delta.to(mean.device), metrics


def build(config) -> CRFL:
    d = config.defense
    return CRFL(d.crfl_sigma, d.crfl_rho_slope, d.crfl_rho_offset, d.crfl_rho_max)


# order −1: its aggregate hook runs last (reverse order), after any update noise, on the global model
register(DefenseSpec("crfl", lambda cfg: cfg.defense.crfl_sigma is not None, build, order=-1))
