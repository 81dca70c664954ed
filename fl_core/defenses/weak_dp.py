"""Weak differential privacy (Sun et al. 2019 §2): after clipping, Gaussian noise N(0, σ²)
per coordinate, added once on the server — never per client.

Placement (NOTES.md): `sum` (reference code, default) adds σ to the SUM of the C·K clipped
updates, which the mean divides by C·K, so the noise on the mean update has std σ/(C·K);
`mean` adds std σ to the mean update. The draw is one full flat vector from the round's
DP_NOISE stream, on CPU in float32.
"""

from __future__ import annotations

import torch

from fl_core.defenses.base import AggregateContext, DefenseSpec, register
from fl_core.rng import Stream, torch_generator
from fl_core.types import Delta


def noise_std_on_mean(sigma: float, placement: str, cohort_size: int) -> float:
    """Std of the noise the mean update receives."""
    return sigma / cohort_size if placement == "sum" else sigma


def dp_noise(shape: torch.Size, ctx: AggregateContext) -> torch.Tensor:
    """The round's N(0, 1) draw, one full flat vector from its DP_NOISE stream (float32, CPU);
    weak DP and adaptive clipping scale it."""
    gen = torch_generator(ctx.seed, Stream.DP_NOISE, ctx.round_idx)
    return torch.randn(shape, generator=gen, dtype=torch.float32)


class GaussianNoise:
    def __init__(self, sigma: float, placement: str):
        self.sigma, self.placement = sigma, placement

    def draw(self, shape: torch.Size, ctx: AggregateContext) -> torch.Tensor:
        return dp_noise(shape, ctx)

    def on_client(self, delta: Delta) -> tuple[Delta, dict]:
        return delta, {}

    def on_aggregate(self, mean: Delta, ctx: AggregateContext) -> tuple[Delta, dict]:
        std = noise_std_on_mean(self.sigma, self.placement, ctx.cohort_size)
        noise = self.draw(mean.shape, ctx)
        assert noise.shape == mean.shape  # one draw per coordinate, nothing broadcast
        return mean + std * noise.to(mean.device), {"noise_std_on_mean": std}


# with defense.clip_quantile set, adaptive clipping adds the noise (scaled to the round's bound)
register(DefenseSpec("weak-dp", lambda cfg: cfg.defense.noise_sigma > 0 and cfg.defense.clip_quantile is None,
                     lambda cfg: GaussianNoise(cfg.defense.noise_sigma, cfg.defense.noise_placement), order=1))
