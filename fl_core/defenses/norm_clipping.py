"""Norm clipping (Sun et al. 2019 §2): Δ ← Δ / max(1, ‖Δ‖₂ / M), with the global L2 norm
over all parameters flattened (not per layer). A zero update passes through unchanged."""

from __future__ import annotations

from fl_core.defenses.base import AggregateContext, DefenseSpec, register
from fl_core.params import l2_norm
from fl_core.types import Delta


def clip_l2(delta: Delta, bound: float) -> tuple[Delta, float]:
    """Return (clipped update, norm before clipping)."""
    norm = l2_norm(delta)
    if norm <= bound:
        return delta, norm
    return delta * (bound / norm), norm


class NormClipping:
    def __init__(self, bound: float):
        self.bound = bound

    def on_client(self, delta: Delta) -> tuple[Delta, dict]:
        clipped, norm = clip_l2(delta, self.bound)
        # per client 1 or 0: the round averages it over the cohort into the clipped share
        return clipped, {"clip_fraction": float(norm > self.bound)}

    def on_aggregate(self, mean: Delta, ctx: AggregateContext) -> tuple[Delta, dict]:
        return mean, {}


# with defense.clip_quantile set, adaptive clipping clips instead (from the bound M as C₀)
register(DefenseSpec("norm-clipping",
                     lambda cfg: cfg.defense.norm_bound is not None and cfg.defense.clip_quantile is None,
                     lambda cfg: NormClipping(cfg.defense.norm_bound), order=0))
