"""One FedAvg round with attacks and defenses (Sun et al. 2019 §1–2):

    w_{t+1} = w_t + η · D_agg( A( D_client(Δ_1), …, D_client(Δ_n) ) )

where Δ_k = w_k − w_t are the clients' updates (attackers' already boosted), D_client are
the per-client defense hooks (clipping), A the aggregator (`defense.aggregator`: FedAvg's
mean weighted by n_k or uniform, or a robust rule) and D_agg the server hooks (noise).
Every hook's and the aggregator's metrics become the round's; for an aggregator that
selects or flags clients, the round (which knows the roles; the aggregator does not)
scores its choice: attacker = positive. Deterministic given (state, plan); never mutates
its inputs.

The server folds the updates in one order, (client_index, slot), whatever order they
arrive in (`RoundFold` buffers early arrivals): clipping, the norms and, for a streaming
aggregator (FedAvg, `needs_matrix` False), the float64 running sum happen update by
update, so a round keeps only floats per client and never the cohort's n updates. Robust
aggregators get the stacked [n, d] matrix as before. Both paths do the same arithmetic in
the same order, so their bits agree.

An attack whose attackers collude (`fl_core.attacks.base.Forger`: ALIE, IPM, Min-Max, ...)
makes the round hold every raw update until all are in; then the attackers' rows are forged
together from what they know (the benign updates, or only their own) and the round folds
as above: the hook runs after benign training and before every defense, on the server, so
every backend and the Ray pool give the same bits.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Iterable, Sequence

import numpy as np
import torch

from fl_core.aggregation import fedavg_weight, key_order
from fl_core.aggregators.base import AggregatorContext, needs_matrix
from fl_core.attacks.base import ForgeContext, forger
from fl_core.config import SimulationConfig
from fl_core.defenses.base import AggregateContext, begin_round, end_round
from fl_core.errors import DivergedError
from fl_core.executor import ClientExecutor, stream_results
from fl_core.params import l2_norm
from fl_core.rng import Stream, torch_generator
from fl_core.preaggregators.compose import with_preaggregation
from fl_core.state import SimulationState
from fl_core.types import ClientResult, RoundPlan


@dataclass(frozen=True)
class RoundStats:
    """Norms of the round (the figures NOTES.md says to watch: benign p90 is below 2), and
    what the defense hooks and the aggregator reported (`extra`)."""

    num_attackers: int
    benign_norms: tuple[float, ...]
    attacker_norm_pre: float | None
    attacker_norm_post: float | None
    aggregate_norm: float
    extra: dict = field(default_factory=dict)
    #: the aggregation rule's own wall time (a streaming rule sums while results arrive: its
    #: last step); a timing, so not in `as_metrics` (the run loop logs it beside round_seconds)
    aggregate_seconds: float = 0.0

    def as_metrics(self) -> dict:
        b = np.asarray(self.benign_norms) if self.benign_norms else None
        return {
            "num_attackers": self.num_attackers,
            "benign_norm_p50": float(np.percentile(b, 50)) if b is not None else None,
            "benign_norm_p90": float(np.percentile(b, 90)) if b is not None else None,
            "benign_norm_max": float(b.max()) if b is not None else None,
            "attacker_norm_pre": self.attacker_norm_pre,
            "attacker_norm_post": self.attacker_norm_post,
            "aggregate_norm": self.aggregate_norm,
            **self.extra,
        }


def flag_rates(accepted: Sequence[bool], roles: Sequence[str]) -> dict:
    """True/false positive rates of the clients an aggregator rejected (flagged), attacker =
    positive: TPR = flagged attackers / attackers, FPR = flagged benign / benign clients;
    None when the round has no client of that role."""
    att = [not a for a, r in zip(accepted, roles) if r == "attacker"]
    ben = [not a for a, r in zip(accepted, roles) if r == "benign"]
    return {
        "flag_tpr": sum(att) / len(att) if att else None,
        "flag_fpr": sum(ben) / len(ben) if ben else None,
    }


def _merge(into: dict, new: dict, source: str) -> None:
    clash = set(into) & set(new)
    assert not clash, f"{source} reports metrics another hook reported: {sorted(clash)}"
    into.update(new)


class RoundFold:
    """The server side of one round, fed one client result at a time.

    `add` takes results in any order and folds them in (client_index, slot) order, keeping
    early arrivals until their turn; `finish` aggregates, applies the aggregate hooks and
    returns the new state and the round's stats. Per client it keeps two norms, the hooks'
    per-client metrics and the role; the update itself only while the aggregator needs
    the matrix (`needs_matrix`), else it is added to the aggregator's accumulator and
    dropped."""

    def __init__(self, config: SimulationConfig, state: SimulationState, plan: RoundPlan,
                 defenses: Sequence, aggregator=None, device: torch.device | str = "cpu", attack=None):
        if aggregator is None:
            from fl_core.build import make_aggregator

            aggregator = make_aggregator(config)
        if attack is None and plan.num_attackers:
            from fl_core.build import make_attack

            attack = make_attack(config)
        # a forging attack with attackers this round: hold the raw results until all are in
        self.forger = forger(attack) if plan.num_attackers else None
        self.held: dict[tuple[int, int], ClientResult] = {}
        self.forge_metrics: dict = {}
        aggregator = with_preaggregation(config, aggregator)  # defense.preaggregation's steps, then the rule
        self.config, self.state, self.plan, self.device = config, state, plan, device
        self.defenses, self.aggregator = begin_round(defenses, state.defense_state), aggregator
        self.keys = sorted((t.client_index, t.slot) for t in plan.tasks)
        self._key_set = set(self.keys)
        self.ctx = AggregatorContext(config.seed, plan.round_idx, len(self.keys), tuple(k for k, _ in self.keys),
                                     global_params=state.global_params)
        self.accumulator = None if needs_matrix(aggregator) else aggregator.accumulator(
            self.ctx, state.aggregator_state, device)
        self.uniform = config.uniform_weighting
        self.pending: dict[tuple[int, int], ClientResult] = {}
        self.deltas: list[torch.Tensor] = []  # matrix aggregators only
        self.weights: list[float] = []
        self.roles: list[str] = []
        self.pre_norms: list[float] = []
        self.post_norms: list[float] = []
        self.per_client: dict[str, list[float]] = {}

    def add(self, result: ClientResult) -> None:
        key = (result.client_index, result.slot)
        if self.forger is not None:
            if key in self.held or key not in self._key_set:
                raise ValueError(f"result for client {key} twice, or not in round {self.plan.round_idx}'s plan")
            self.held[key] = result
            return
        if key in self.pending or len(self.roles) >= len(self.keys) or key < self.keys[len(self.roles)]:
            raise ValueError(f"result for client {key} twice, or not in round {self.plan.round_idx}'s plan")
        self.pending[key] = result
        while len(self.roles) < len(self.keys) and self.keys[len(self.roles)] in self.pending:
            self._fold(self.pending.pop(self.keys[len(self.roles)]))

    def _fold(self, res: ClientResult) -> None:
        d = res.delta
        pre = l2_norm(d)
        self.pre_norms.append(pre)
        for defense in self.defenses:
            d, m = defense.on_client(d)
            for k, v in m.items():
                self.per_client.setdefault(k, []).append(float(v))
        self.post_norms.append(pre if d is res.delta else l2_norm(d))  # unchanged: same bits
        w = fedavg_weight(res, self.uniform)
        if self.accumulator is None:
            self.deltas.append(d)
        else:
            self.accumulator.add(d, w)
        self.weights.append(w)
        self.roles.append(res.role)

    def _forge(self) -> None:
        """The attackers' rows forged together (`Forger.forge`), then every update folded in
        (client_index, slot) order."""
        missing = [k for k in self.keys if k not in self.held]
        if missing:
            raise ValueError(f"round {self.plan.round_idx}: no result for clients {missing[:10]}")
        results = [self.held.pop(k) for k in self.keys]
        att = [i for i, r in enumerate(results) if r.role == "attacker"]
        own = torch.stack([results[i].delta for i in att])
        f = self.forger
        if f.knowledge == "omniscient":
            ben = [r.delta for r in results if r.role == "benign"]
            known = torch.stack(ben) if ben else own[:0]
        else:
            known = own
        ctx = ForgeContext(self.config.seed, self.plan.round_idx, len(results), len(att), f.knowledge, self.config)
        forged, self.forge_metrics = f.forge(known, own, ctx, torch_generator(self.config.seed, Stream.FORGE,
                                                                              self.plan.round_idx))
        forged = forged.to("cpu", torch.float32)
        if tuple(forged.shape) != tuple(own.shape):
            raise ValueError(f"{type(f).__name__}.forge returned shape {tuple(forged.shape)}, not {tuple(own.shape)}")
        for j, i in enumerate(att):
            results[i] = replace(results[i], delta=forged[j])
        self.forger = None
        for res in results:
            self.add(res)

    def finish(self) -> tuple[SimulationState, RoundStats]:
        if self.forger is not None:
            self._forge()
        if len(self.roles) != len(self.keys):
            missing = [k for k in self.keys[len(self.roles):] if k not in self.pending]
            raise ValueError(f"round {self.plan.round_idx}: no result for clients {missing[:10]}")
        config, plan, state = self.config, self.plan, self.state
        extra = {k: float(np.mean(v)) for k, v in self.per_client.items()}
        t0 = time.perf_counter()
        if self.accumulator is None:
            updates = torch.stack(self.deltas).to(self.device)
            self.deltas = []
            weights = torch.tensor(self.weights, dtype=torch.float64)
            agg = self.aggregator.aggregate(updates, weights, self.ctx, state.aggregator_state)
            del updates
        else:
            agg = self.accumulator.result()
        seconds = time.perf_counter() - t0
        _merge(extra, self.forge_metrics, "the attack's round hook")
        _merge(extra, agg.metrics, "the aggregator")
        if agg.accepted is not None:
            _merge(extra, flag_rates(agg.accepted, self.roles), "the aggregator")
        mean = agg.delta.to("cpu", torch.float32)
        ctx = AggregateContext(config.seed, plan.round_idx, len(self.roles), state.global_params, config.fl.server_lr)
        for defense in reversed(self.defenses):
            mean, m = defense.on_aggregate(mean, ctx)
            _merge(extra, m, type(defense).__name__)
        new_params = state.global_params + config.fl.server_lr * mean
        if not bool(torch.isfinite(new_params).all()):
            raise DivergedError(plan.round_idx + 1)
        att = [i for i, r in enumerate(self.roles) if r == "attacker"]
        stats = RoundStats(
            num_attackers=len(att),
            benign_norms=tuple(self.pre_norms[i] for i, r in enumerate(self.roles) if r == "benign"),
            attacker_norm_pre=max((self.pre_norms[i] for i in att), default=None),
            attacker_norm_post=max((self.post_norms[i] for i in att), default=None),
            aggregate_norm=l2_norm(mean),
            extra=extra,
            aggregate_seconds=seconds,
        )
        new_state = state.replace(round_idx=plan.round_idx + 1, global_params=new_params,
                                  aggregator_state=agg.state, defense_state=end_round(self.defenses))
        return new_state, stats


def apply_round(
    config: SimulationConfig,
    state: SimulationState,
    plan: RoundPlan,
    results: Sequence[ClientResult],
    defenses: Sequence,
    aggregator=None,
    device: torch.device | str = "cpu",
    attack=None,
) -> tuple[SimulationState, RoundStats]:
    """Server side of a round: forge (colluding attacks), defend, aggregate, apply. Raises
    DivergedError on NaN/inf.

    Args:
        results: one per task of `plan`, in any order.
        aggregator: the `fl_core.aggregators` rule; None builds the config's.
        device: where the aggregator works (the stacked [n, d] updates, or a streaming
            aggregator's sum; the trial's device); the new global weights stay on CPU.
        attack: the built attack (its round hook, if it forges); None builds the config's.
    """
    fold = RoundFold(config, state, plan, defenses, aggregator, device, attack)
    for i in key_order(results):
        fold.add(results[i])
    return fold.finish()


def run_round(
    config: SimulationConfig,
    state: SimulationState,
    plan: RoundPlan,
    executor: ClientExecutor,
    defenses: Sequence,
    aggregator=None,
    device: torch.device | str = "cpu",
    attack=None,
) -> tuple[SimulationState, RoundStats]:
    """Train the plan's tasks with `executor` and fold each result into the round as it
    comes (`RoundFold`): the tasks go to the executor in (client_index, slot) order, the
    order the server folds them in, so an executor that streams (`stream_results`) leaves
    little to buffer."""
    assert plan.round_idx == state.round_idx, (plan.round_idx, state.round_idx)
    fold = RoundFold(config, state, plan, defenses, aggregator, device, attack)
    tasks = [plan.tasks[i] for i in key_order(plan.tasks)]
    fold_results(fold, stream_results(executor, tasks, state.global_params))
    return fold.finish()


def fold_results(fold: RoundFold, results: Iterable[tuple[int, ClientResult]]) -> None:
    """Feed (task position, result) pairs to `fold`, dropping each result once folded."""
    for _, res in results:
        fold.add(res)
        del res
