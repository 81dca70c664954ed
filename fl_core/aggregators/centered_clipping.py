"""Centered clipping (Karimireddy, He and Jaggi 2021, "Learning from history for Byzantine
robust optimization", ICML, eq. (CC)): starting from the last round's aggregate v, repeat L
times
    v ← v + (1/n) Σ_i (x_i − v) · min(1, τ / ‖x_i − v‖),
and the aggregate is v. Updates far from the previous aggregate move it by at most τ/n each,
so a few large (boosted) updates cannot drag it far in one round, while updates within τ of
v pass unchanged (with every update inside the ball, one step is the plain mean).

State: v, the aggregate this rule returned last round (`aggregator_state["center"]`, float32
on CPU, so a resumed run is bit-exact); round 0 starts from v = 0, as the authors' server
(epfml/byzantine-robust-optimizer's `Clipping` keeps its returned `momentum`, starting at
zeros; read here through its ports in ByzFL and FLPoison, which do the same). v is the
aggregator's own output, before any aggregate hook (server noise) is applied.
Defaults are the authors' code's for their CIFAR-10 experiments
(`momentum-robustness/cifar10-all.py`: `Clipping(tau=100, n_iter=1)`; also ByzFL's and
FLPoison's). τ is in the units of the updates Δ = local − global (L2); note that with
v = 0 in round 0 and τ = 100, only updates longer than 100 are clipped in round 0.
Where we follow the code over the paper's text, or choose: the mean is unweighted (1/n, the
paper and the code; the FedAvg weights are not used); the paper's workers send momentum
(β) vectors, our clients send their local-training updates (the issue's FL setting);
x_i − v and the running sum are float64, v is stored as the float32 aggregate the model
applied. Cross-checked against ByzFL's `CenteredClipping` (tests/fl_core/test_crosscheck_byzfl.py).
"""

from __future__ import annotations

import torch
from pydantic import Field

from fl_core.aggregators.base import Aggregate, AggregatorContext, AggregatorSpec, Params, register


class CenteredClippingParams(Params):
    tau: float = Field(100.0, gt=0, description="τ: clipping radius around the last aggregate, in "
                       "update L2 units (the authors' code: 100)")
    iterations: int = Field(1, ge=1, le=1000, description="L: clipping iterations per round "
                            "(the authors' code: 1)")


def centered_clip(updates: torch.Tensor, center: torch.Tensor, tau: float, iterations: int
                  ) -> tuple[torch.Tensor, list[int]]:
    """(v float64 [d], rows clipped in each iteration) for `updates` [n, d] from `center` [d].

    Row by row in the given (key) order with a float64 sum: the bits do not depend on the
    order results arrived in, and no [n, d] float64 copy is made."""
    n = updates.shape[0]
    v = center.to(device=updates.device, dtype=torch.float64, copy=True)
    clipped = []
    for _ in range(iterations):
        acc = torch.zeros_like(v)
        count = 0
        for i in range(n):
            diff = updates[i].to(torch.float64) - v
            norm = float(torch.linalg.vector_norm(diff))
            if norm > tau:  # min(1, τ/‖·‖); a zero difference passes as it is
                acc.add_(diff, alpha=tau / norm)
                count += 1
            else:
                acc.add_(diff)
        v = v + acc / n
        clipped.append(count)
    return v, clipped


class CenteredClipping:
    def __init__(self, tau: float, iterations: int):
        self.tau, self.iterations = tau, iterations

    def aggregate(self, updates: torch.Tensor, weights: torch.Tensor, ctx: AggregatorContext,
                  state: dict) -> Aggregate:
        n, d = updates.shape
        center = state.get("center")
        if center is None:
            center = torch.zeros(d, dtype=torch.float32)
        assert center.shape == (d,), "the stored centre does not match the model size"
        v, clipped = centered_clip(updates, center, self.tau, self.iterations)
        delta = v.to(torch.float32)
        metrics = {"cc_clip_fraction": clipped[0] / n, "cc_center_norm": float(torch.linalg.vector_norm(
            center.to(torch.float64)))}
        return Aggregate(delta, metrics, {"center": delta.cpu().clone()})


SPEC = register(AggregatorSpec(
    "centered-clipping", CenteredClippingParams,
    lambda p, cfg: CenteredClipping(p.tau, p.iterations),
    lambda p: f"CC τ={p.tau:g}" + ("" if p.iterations == 1 else f" L={p.iterations}"),
))
