"""The configured pre-aggregation steps in order, then the aggregator: one matrix aggregator.

`with_preaggregation(config, aggregator)` is what the round calls (`fl_core.round.RoundFold`):
without `defense.preaggregation` it returns the aggregator itself (a streaming FedAvg still
streams, bit for bit as before); with it, a `Preaggregated` wrapper, which needs the stacked
matrix (no `streaming`), so the round stacks the cohort even for FedAvg. The wrapper applies
each step to the [n, d] updates and their FedAvg weights, then calls the aggregator's
`aggregate` on what is left, with a context whose `cohort_size` is the number of rows.

Rows and clients: after a step with `keeps_rows = False` (Bucketing) a row is a mix of
several clients, so the wrapper returns `accepted = None` and the round computes no flag
rates (the aggregator's own counts, e.g. `agg_selected`, then count rows); the context's
`client_indices` is then empty (no per-client identity; rules that need one are refused at
config validation). After NNM alone rows are still clients, and `accepted` is passed on.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import torch

from fl_core.aggregators.base import Aggregate, AggregatorContext
from fl_core.config import SimulationConfig
from fl_core.preaggregators import PREAGGREGATORS
from fl_core.preaggregators.base import PreaggContext, Preaggregator


class Preaggregated:
    """`steps` ((name, built step, keeps_rows) in order), then `inner`.

    Its state is the inner aggregator's (the steps keep none across rounds); its metrics are
    the steps' and the aggregator's together.
    """

    def __init__(self, steps: Sequence[tuple[str, Preaggregator, bool]], inner):
        self.steps = tuple(steps)
        self.inner = inner

    def aggregate(self, updates: torch.Tensor, weights: torch.Tensor, ctx: AggregatorContext,
                  state: dict) -> Aggregate:
        metrics: dict = {}
        rows_are_clients = True
        for position, (name, step, keeps_rows) in enumerate(self.steps):
            updates, weights, m = step.apply(updates, weights, PreaggContext(ctx.seed, ctx.round_idx, position))
            clash = set(metrics) & set(m)
            assert not clash, f"pre-aggregation step {name} reports metrics another step reported: {sorted(clash)}"
            metrics.update(m)
            rows_are_clients = rows_are_clients and keeps_rows
        inner_ctx = replace(ctx, cohort_size=int(updates.shape[0]),
                            client_indices=ctx.client_indices if rows_are_clients else ())
        agg = self.inner.aggregate(updates, weights, inner_ctx, state)
        clash = set(metrics) & set(agg.metrics)
        assert not clash, f"the aggregator reports metrics a pre-aggregation step reported: {sorted(clash)}"
        return Aggregate(agg.delta, {**metrics, **agg.metrics}, agg.state,
                         agg.accepted if rows_are_clients else None)


def build_steps(config: SimulationConfig) -> list[tuple[str, Preaggregator, bool]]:
    """The config's steps, built from their (validated) params, in order."""
    out = []
    for name in config.defense.preaggregation_steps:
        spec = PREAGGREGATORS.spec_for(name)
        out.append((name, spec.build(spec.params(**config.defense.preaggregation_params.get(name, {})), config),
                    spec.keeps_rows))
    return out


def with_preaggregation(config: SimulationConfig, aggregator):
    """`aggregator` behind the config's pre-aggregation steps (itself when there are none,
    or when it is already wrapped)."""
    if not config.defense.preaggregation_steps or isinstance(aggregator, Preaggregated):
        return aggregator
    return Preaggregated(build_steps(config), aggregator)
