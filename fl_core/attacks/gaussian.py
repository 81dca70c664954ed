"""Gaussian noise: every attacker sends a fresh draw of N(μ, σ²) per coordinate, μ = 0 and
σ = 1 as ByzFL's Gaussian (`mu=0.0, sigma=1.0`) and FLPoison (`attackers/gaussian.py`).

The draw is the round hook's (`Forger.forge`, the Stream.FORGE generator of the round): one
[attackers, d] float32 block, `randn · σ + μ` as ByzFL computes it, rows in (client_index,
slot) order, so it is the same on every backend and under resume. The attackers need no
update of their own, so `craft` trains nothing and returns zeros; `knowledge` is
`own-data` only so that the hook never waits for benign rows it would not read.
"""

from __future__ import annotations

from pydantic import Field

from fl_core.attacks.base import AttackSpec, register
from fl_core.plugins import Params


class GaussianParams(Params):
    mu: float = Field(0.0, description="mean of each coordinate's draw (ByzFL, FLPoison: 0)")
    sigma: float = Field(1.0, ge=0, description="standard deviation of each coordinate's draw (ByzFL, FLPoison: 1)")


class Gaussian:
    knowledge = "own-data"

    def __init__(self, mu: float, sigma: float):
        self.mu = mu
        self.sigma = sigma

    def craft(self, task, model, global_params, benign, malicious, hp, gen):
        return global_params * 0, {}

    def forge(self, known, own, ctx, gen):
        import torch

        return torch.randn(tuple(own.shape), generator=gen) * self.sigma + self.mu, {}


def _build(params: GaussianParams, config) -> Gaussian:
    return Gaussian(params.mu, params.sigma)


register(AttackSpec("gaussian", "Gaussian", _build, GaussianParams, rank=10, goal="untargeted"))
