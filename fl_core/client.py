"""`ClientRunner`: one process's client training for a round (the serial executor, or one
Ray actor, wraps it; stateless between rounds).

It holds the data on the device once (for a lazy population, `fl_core.data.population`,
only each round's writers: `_stage` fetches them into one small block, O(cohort) memory
whatever K is), builds the attack, the backdoor task and the `fl.backend` backend from the
config, and hands each of them what it needs: the backend a `BackendContext` and the
round's `Cohort`, an attacker's plug-in its own data and its D_mal. Nothing calls back into
the runner; the SGD loop itself is `fl_core.training`.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch

from fl_core.backdoors import build_task
from fl_core.backends import BackendContext, check_precision, make_backend, precision_scope
from fl_core.config import SimulationConfig
from fl_core.backdoors import select_backdoor
from fl_core.backdoors.base import BackdoorSets
from fl_core.data.population import WriterPopulation, gather, is_lazy
from fl_core.models import CNN
from fl_core.build import make_attack
from fl_core.rng import client_rng_scope
from fl_core.training import Cohort, SGDParams, benign_update, resolve_device, task_generator, torch_threads
from fl_core.types import ClientResult, ClientTask


class ClientRunner:
    """Trains one round's tasks for one process (the serial executor or one Ray actor).

    Args:
        config: the validated simulation config.
        data: the federated data: an eager FederatedData (the runner copies all writers to
            `device` once) or a lazy population (the runner fetches each round's writers).
        device: torch device; None resolves `config.fl.device`.
    """

    def __init__(self, config: SimulationConfig, data: WriterPopulation, device: str | torch.device | None = None):
        self.config = config
        self.device = torch.device(device) if device is not None else resolve_device(config.fl.device)
        self.data = data
        self.lazy = is_lazy(data)
        self.backdoor: BackdoorSets = select_backdoor(config, data)
        self.task = build_task(config, data, self.backdoor)  # gives each attacker its D_mal
        if self.lazy:
            self.cohort = self._stage(())
        else:
            offsets = np.asarray(data.train_offsets, dtype=np.int64)
            self.cohort = Cohort(
                torch.from_numpy(np.ascontiguousarray(data.train_pixels)).to(self.device),
                torch.from_numpy(np.ascontiguousarray(data.train_labels)).to(self.device),
                lambda k: (int(offsets[k]), int(offsets[k + 1])),
            )
        self.hp = SGDParams(config.fl.local_epochs, config.fl.batch_size, config.fl.client_lr)
        self.attack = make_attack(config)
        self.model = CNN().to(self.device)
        check_precision(config.fl.precision, self.device)
        self.backend_context = BackendContext(self.model, self.hp, self.device, config.fl.vectorized_chunk)
        self.backend = make_backend(config.fl.backend, self.backend_context)

    def _stage(self, writers: Sequence[int]) -> Cohort:
        """Lazy population: `writers`' train examples as one block on the device."""
        writers = sorted(set(int(k) for k in writers))
        px, lb, off = gather(self.data, writers, "train")
        spans = {k: (int(off[i]), int(off[i + 1])) for i, k in enumerate(writers)}
        return Cohort(torch.from_numpy(px).to(self.device), torch.from_numpy(lb).to(self.device), spans.__getitem__)

    def run_one(self, task: ClientTask, global_params: torch.Tensor) -> ClientResult:
        """One task through its role's path: benign → `training.benign_update`, attacker →
        the attack plug-in with the backdoor task's D_mal for it."""
        gp = global_params.to(self.device)
        if task.role != "attacker":
            return benign_update(task, self.cohort, self.model, gp, self.hp, self.device)
        own = self.cohort.client(task.client_index)
        with client_rng_scope(task.seed, self.device):
            mal = self.task.malicious(own)
            delta, metrics = self.attack.craft(task, self.model, gp, own, mal, self.hp, task_generator(task))
        return ClientResult(task.client_index, task.slot, task.role, len(own), delta.cpu(), metrics)

    def run(self, tasks: Sequence[ClientTask], global_params: torch.Tensor) -> list[ClientResult]:
        """Train `tasks` and return their results in task order (`run_iter`, collected)."""
        results: list[ClientResult | None] = [None] * len(tasks)
        for i, res in self.run_iter(tasks, global_params):
            results[i] = res
        return results  # type: ignore[return-value]

    def run_iter(self, tasks: Sequence[ClientTask], global_params: torch.Tensor) -> Iterator[tuple[int, ClientResult]]:
        """Train `tasks`, yielding (position, result) in task order as they are trained: the
        benign ones through the `fl.backend` backend, in chunks of `backend.chunk_size`
        consecutive benign tasks (one for `sequential`, `fl.vectorized_chunk` for
        `vectorized`), attackers one by one through the attack plug-in. Every task has its
        own generator and RNG scope and starts from `global_params`, so the order and
        grouping in which they train changes no result. The thread count and precision
        are set around each piece of training only, never while the caller holds control
        (the server's norms and sums run at the caller's settings)."""
        if self.lazy:
            self.cohort = self._stage([t.client_index for t in tasks])
        gp = global_params.to(self.device)
        benign = [i for i, t in enumerate(tasks) if t.role == "benign"]
        chunk = max(1, int(self.backend.chunk_size(len(benign)))) if benign else 1
        trained: dict[int, ClientResult] = {}
        next_benign = 0
        for i, t in enumerate(tasks):
            if t.role == "benign" and i not in trained:
                part = benign[next_benign : next_benign + chunk]
                next_benign += len(part)
                with torch_threads(self.config.fl.threads), precision_scope(self.config.fl.precision, self.device):
                    out = self.backend.train([tasks[j] for j in part], gp, self.cohort)
                trained.update(zip(part, out, strict=True))
                del out
            if t.role == "benign":
                yield i, trained.pop(i)
            else:
                with torch_threads(self.config.fl.threads), precision_scope(self.config.fl.precision, self.device):
                    res = self.run_one(t, gp)
                yield i, res
