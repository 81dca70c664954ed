"""Multi-Krum (Blanchard et al. 2017, "Machine learning with adversaries: Byzantine tolerant
gradient descent", NeurIPS, §5): the m updates with the lowest Krum scores (scored once on
the whole cohort, ties to the lower (client_index, slot)) are averaged with their FedAvg
weights. m = 1 is Krum; m = n is FedAvg. Unset, f = ⌊(n − 3)/2⌋ and m = n − f.
"""

from __future__ import annotations

import torch
from pydantic import Field

from fl_core.aggregation import ordered_weighted_mean
from fl_core.aggregators.base import Aggregate, AggregatorContext, AggregatorSpec, Params, flag_metrics, register
from fl_core.aggregators.krum import check_f, krum_scores, resolve_f
from fl_core.errors import ConfigError


class MultiKrumParams(Params):
    f: int | None = Field(None, ge=0, description="assumed number of attackers per round; "
                          "null = floor((n - 3) / 2)")
    m: int | None = Field(None, ge=1, description="number of updates selected and averaged; null = n - f")


def check(p: MultiKrumParams, cfg) -> None:
    n = cfg.fl.clients_per_round
    check_f(p.f, n)
    if p.m is not None and p.m > n:
        raise ConfigError("defense.aggregator_params.m", p.m, f"at most fl.clients_per_round = {n}")


class MultiKrum:
    def __init__(self, f: int | None, m: int | None):
        self.f, self.m = f, m

    def aggregate(self, updates: torch.Tensor, weights: torch.Tensor, ctx: AggregatorContext,
                  state: dict) -> Aggregate:
        n = updates.shape[0]
        f = resolve_f(self.f, n)
        m = n - f if self.m is None else self.m
        scores = krum_scores(updates, f)
        chosen = torch.sort(scores, stable=True).indices[:m]
        keep = sorted(int(i) for i in chosen)  # back to key order for the ordered sum
        accepted = tuple(i in set(keep) for i in range(n))
        idx = torch.tensor(keep, device=updates.device)
        delta = ordered_weighted_mean(updates[idx], weights[idx.cpu()])
        return Aggregate(delta, {**flag_metrics(accepted), "krum_f": f}, accepted=accepted)


SPEC = register(AggregatorSpec(
    "multi-krum", MultiKrumParams, lambda p, cfg: MultiKrum(p.f, p.m),
    lambda p: "Multi-Krum" + "".join(f" {k}={v}" for k, v in (("f", p.f), ("m", p.m)) if v is not None),
    check=check,
))
