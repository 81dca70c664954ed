"""The simulation loop: plan a round, train its clients, defend and aggregate, evaluate.

`Simulation.step()` runs one round and is what the CLI and the Ray Tune trainable drive;
`Simulation.run()` runs it to the end in memory through the one run loop (`fl_core.loop`). Stopping after any round and resuming from
`sim.state` gives bit-identical results on CPU (everything random is derived from
(seed, stream, round, client), and the state holds the rest).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch

from fl_core.attacks.base import TriggerContext, learned_trigger
from fl_core.certify import certify, certify_due
from fl_core.client import ClientRunner
from fl_core.training import ClientData, resolve_device, torch_threads
from fl_core.config import SimulationConfig, result_hash
from fl_core.data import load_data
from fl_core.data.population import WriterPopulation, gather, is_lazy
from fl_core.errors import ConfigError, DivergedError
from fl_core.evaluation import Evaluator
from fl_core.loop import run_loop
from fl_core.executor import ClientExecutor, SerialExecutor
from fl_core.models import CNN
from fl_core.params import get_flat
from fl_core.build import make_aggregator, make_attack, make_defenses
from fl_core.rng import Stream, client_rng_scope, derive_seed, torch_generator
from fl_core.round import run_round
from fl_core.sampling import Population, attacker_pool, plan_round, sparse_attacker_pool
from fl_core.state import SimulationState, load_state, model_size, runtime_env
from fl_core.types import RoundPlan


def initial_state(
    config: SimulationConfig, device: torch.device | str = "cpu", init_root: str | Path | None = None
) -> SimulationState:
    """Where round 0's weights come from (`fl.init`).

    `random`: the CNN's default (Kaiming-uniform) init drawn from the INIT stream, round 0.
    Otherwise a warm start (the paper's derivation assumes a model that "has sufficiently
    converged"; backdoor studies attack pretrained checkpoints): the weights and round of a
    finished run (a `fl-sweep simulate --out` directory or its `state.pt`), so rounds and
    `attack.start_round` keep counting from where the warm-up stopped. A relative `fl.init`
    is resolved against `init_root` when given (the sweeper's storage root), else the
    working directory; the config, and so its hash, keeps the relative form.
    """
    if config.fl.init == "random":
        with client_rng_scope(derive_seed(config.seed, Stream.INIT)):
            params = get_flat(CNN())
        return SimulationState(0, params, result_hash(config), env=runtime_env(device))
    init = config.fl.init
    if init_root is not None and not Path(init).is_absolute():
        init = str(Path(init_root) / init)
    start = load_warm_start(init)
    if start.round_idx >= config.fl.rounds:
        raise ConfigError(
            "fl.rounds", config.fl.rounds,
            f"more than the warm start's {start.round_idx} rounds ({init})",
        )
    return SimulationState(start.round_idx, start.global_params, result_hash(config), env=runtime_env(device))


def load_warm_start(init: str) -> SimulationState:
    """The checkpoint `fl.init` names: a file, or a directory holding `state.pt`."""
    path = Path(init)
    if path.is_dir():
        path = path / "state.pt"
    if not path.is_file():
        raise ConfigError(
            "fl.init", init, "random, or a finished run to start from: a `fl-sweep simulate --out` "
            "directory (with state.pt) or a state.pt file",
        )
    state = load_state(path)
    if state.global_params.shape != (model_size(),):
        raise ConfigError("fl.init", init, "a checkpoint of the paper's CNN (its weights have another size)")
    return state


def is_eval_round(config: SimulationConfig, rounds_done: int) -> bool:
    return rounds_done % config.fl.eval_every == 0 or rounds_done == config.fl.rounds


class Simulation:
    """One federated training run.

    Args:
        config: validated config.
        data: federated data (eager or lazy, `fl_core.data.population`); None loads `config.data`.
        executor: how clients train; None trains them serially in this process.
        state: where to start; None starts at round 0 (pass a loaded checkpoint to resume).
    """

    def __init__(
        self,
        config: SimulationConfig,
        data: WriterPopulation | None = None,
        executor: ClientExecutor | None = None,
        state: SimulationState | None = None,
    ):
        self.config = config
        self.device = resolve_device(config.fl.device)
        self.data = data if data is not None else load_data(config.data, config.seed)
        runner = None
        if executor is None:
            runner = ClientRunner(config, self.data, self.device)
            executor = SerialExecutor(runner)
        self.executor = executor
        from fl_core.backdoors import select_backdoor

        self.backdoor = runner.backdoor if runner is not None else select_backdoor(config, self.data)
        k_all = self.data.num_writers
        # lazy: no O(K) Python objects (n_k stays one int64 array, the pool is drawn sparsely)
        pool = sparse_attacker_pool if is_lazy(self.data) else attacker_pool
        self.population = Population(
            num_writers=k_all,
            weights=self.data.train_counts(),
            attackers=pool(config, k_all, self.backdoor.reserved),
        )
        self.defenses = make_defenses(config)
        self.aggregator = make_aggregator(config)
        self.attack = make_attack(config)  # its round hook (colluding attackers), if it has one
        self.trigger = learned_trigger(self.attack)  # a trigger the attackers optimise, if any
        self.evaluator = Evaluator(config, self.data, self.backdoor, self.device, self.attack)
        self.state = state if state is not None else initial_state(config, self.device)

    @property
    def done(self) -> bool:
        return self.state.round_idx >= self.config.fl.rounds

    def step(self) -> dict | None:
        """Run round `state.round_idx`; return its metrics if it is evaluated, else None."""
        t0 = time.perf_counter()
        plan = plan_round(self.config, self.population, self.state.round_idx)
        trigger_metrics: dict = {}
        if self.trigger is not None and plan.num_attackers:
            plan, trigger_metrics = self._learn_trigger(plan)
        self.state, stats = run_round(self.config, self.state, plan, self.executor, self.defenses,
                                      self.aggregator, self.device, self.attack)
        seconds = time.perf_counter() - t0
        if not is_eval_round(self.config, self.state.round_idx):
            return None
        t1 = time.perf_counter()
        metrics = {"round": self.state.round_idx,
                   **self.evaluator.evaluate(self.state.global_params, self.state.attack_state)}
        if certify_due(self.config, self.state.round_idx):  # CRFL's smoothed model (fl_core/certify.py)
            metrics.update(certify(self.config, self.evaluator, self.state.global_params, self.state.round_idx,
                                   attack_state=self.state.attack_state))
        metrics.update(stats.as_metrics())
        metrics.update(trigger_metrics)
        metrics["round_seconds"] = seconds
        metrics["aggregate_seconds"] = stats.aggregate_seconds
        metrics["eval_seconds"] = time.perf_counter() - t1
        return metrics

    def _learn_trigger(self, plan: RoundPlan) -> tuple[RoundPlan, dict]:
        """The round's trigger (`LearnedTrigger.learn`, on the round's attackers' pooled
        data, from Stream.TRIGGER keyed by round), kept in the state, and the plan whose
        attacker tasks carry it. It runs before any client of the round trains, so the
        executor and the order in which clients train change nothing."""
        attackers = tuple(sorted({t.client_index for t in plan.tasks if t.role == "attacker"}))
        px, lb, _ = gather(self.data, attackers, "train")
        data = ClientData(torch.from_numpy(px).to(self.device), torch.from_numpy(lb).to(self.device))
        ctx = TriggerContext(self.config.seed, plan.round_idx, attackers, data,
                             self.state.global_params.to(self.device), self.device, self.config)
        gen = torch_generator(self.config.seed, Stream.TRIGGER, plan.round_idx)
        with torch_threads(self.config.fl.threads):  # like every piece of training
            state, metrics = self.trigger.learn(ctx, dict(self.state.attack_state), gen)
        state = {k: v.detach().to("cpu") for k, v in state.items()}
        self.state = self.state.replace(attack_state=state)
        tasks = tuple(replace(t, attack_state=state) if t.role == "attacker" else t for t in plan.tasks)
        return replace(plan, tasks=tasks), metrics

    def run(self, on_round_end: Callable[[SimulationState, dict | None], None] | None = None) -> list[dict]:
        """Run to `config.fl.rounds` in memory (tests, benchmarks: nothing persisted);
        returns the evaluated rounds' metrics. The same loop as every front end
        (`fl_core.loop.run_loop`); divergence raises DivergedError."""
        history: list[dict] = []
        run_loop(self, _MemorySink(self, on_round_end), history)
        return history


class _MemorySink:
    """`RunSink` of an in-memory run: tells the caller's callback of each round, keeps
    no checkpoint, and raises on divergence (no status file to record it in)."""

    def __init__(self, sim: Simulation, on_round_end: Callable[[SimulationState, dict | None], None] | None):
        self.sim, self.callback = sim, on_round_end

    def on_round(self, round_num: int, metrics: dict | None, checkpoint_due: bool) -> None:
        if self.callback is not None:
            self.callback(self.sim.state, metrics)

    def on_checkpoint(self, state: SimulationState, history: list[dict]) -> None:
        pass

    def on_end(self, status: str, state: SimulationState, history: list[dict],
               error: DivergedError | None) -> None:
        if error is not None:
            raise error
