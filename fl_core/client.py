"""Client-side training: the only place SGD happens.

A client starts from the global weights w_t, runs plain SGD (no momentum) for E epochs over
its own data in minibatches, reshuffled each epoch with its task's generator, and returns
Δ = w − w_t. Attacks compose `sgd_epochs`/`local_train`; they never copy the loop.
`ClientRunner` holds the data on the device once and trains a list of tasks; it is what a
Ray actor wraps, so an actor is stateless between rounds. For a lazy population
(`fl_core.data.population`) it holds no population pixels: each `run` fetches the tasks'
writers into one small block first (O(cohort) memory, whatever K is).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from fl_core.config import SimulationConfig
from fl_core.backdoors import build_task
from fl_core.data.backdoor import BackdoorSets, select_backdoor
from fl_core.data.population import WriterPopulation, gather, is_lazy
from fl_core.models import CNN
from fl_core.params import get_flat, set_flat
from fl_core.rng import client_rng_scope
from fl_core.types import ClientResult, ClientTask, Delta


@dataclass(frozen=True)
class SGDParams:
    epochs: int
    batch_size: int
    lr: float


@dataclass(frozen=True)
class ClientData:
    """One client's (or the attacker's union) examples on the device.

    `pixels` are uint8 (N, 28, 28): converted to float per minibatch, which keeps the whole
    population on a GPU as one quarter-size block.
    """

    pixels: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def cat(self, other: "ClientData") -> "ClientData":
        return ClientData(torch.cat([self.pixels, other.pixels]), torch.cat([self.labels, other.labels]))


def to_input(pixels_u8: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 28, 28) → float32 (B, 1, 28, 28) in [0, 1], TFF convention."""
    return pixels_u8.unsqueeze(1).to(torch.float32).div_(255.0)


def sgd_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float) -> float:
    """One plain SGD step on the mean cross-entropy of the batch; returns the loss."""
    model.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(p.grad, alpha=-lr)
    return float(loss.detach())


def sgd_epochs(model: torch.nn.Module, data: ClientData, hp: SGDParams, gen: torch.Generator) -> float:
    """Run `hp.epochs` epochs of minibatch SGD on `data`, in place; returns the mean loss.

    The permutation is drawn on the CPU from the task's generator so that the order of
    examples is the same on every device.
    """
    n = len(data)
    model.train()
    total, steps = 0.0, 0
    for _ in range(hp.epochs):
        perm = torch.randperm(n, generator=gen).to(data.labels.device)
        for start in range(0, n, hp.batch_size):
            idx = perm[start : start + hp.batch_size]
            total += sgd_step(model, to_input(data.pixels[idx]), data.labels[idx], hp.lr)
            steps += 1
    return total / max(steps, 1)


def local_train(
    model: torch.nn.Module, global_params: torch.Tensor, data: ClientData, hp: SGDParams, gen: torch.Generator
) -> tuple[Delta, dict]:
    """Honest client update: SGD from `global_params`; returns (Δ = w − w_t, metrics)."""
    set_flat(model, global_params)
    loss = sgd_epochs(model, data, hp, gen)
    return get_flat(model) - global_params, {"train_loss": loss}


class ClientRunner:
    """Trains one round's tasks for one process (the serial executor or one Ray actor).

    Args:
        config: the validated simulation config.
        data: the federated data: an eager FederatedData (the runner copies all writers to
            `device` once) or a lazy population (the runner fetches each round's writers).
        device: torch device; None resolves `config.fl.device`.
    """

    def __init__(self, config: SimulationConfig, data: WriterPopulation, device: str | torch.device | None = None):
        from fl_core.registry import make_attack  # registry imports attacks which import this module

        self.config = config
        self.device = torch.device(device) if device is not None else resolve_device(config.fl.device)
        self.data = data
        self.lazy = is_lazy(data)
        self.backdoor: BackdoorSets = select_backdoor(config, data)
        self.task = build_task(config, data, self.backdoor)  # gives each attacker its D_mal
        if self.lazy:
            self._stage(())
        else:
            self.offsets = np.asarray(data.train_offsets, dtype=np.int64)
            self.train_pixels = torch.from_numpy(np.ascontiguousarray(data.train_pixels)).to(self.device)
            self.train_labels = torch.from_numpy(np.ascontiguousarray(data.train_labels)).to(self.device)
        self.hp = SGDParams(config.fl.local_epochs, config.fl.batch_size, config.fl.client_lr)
        self.attack = make_attack(config)
        self.model = CNN().to(self.device)
        from fl_core.backends import check_precision, make_backend

        check_precision(config.fl.precision, self.device)
        self.backend = make_backend(config.fl.backend, self)

    def rows(self, k: int) -> tuple[int, int]:
        """Writer k's [start, stop) rows in `train_pixels`/`train_labels` (for a lazy
        population: in the current round's block, so k must be one of its tasks)."""
        if self.lazy:
            return self._rows[k]
        return int(self.offsets[k]), int(self.offsets[k + 1])

    def client_data(self, k: int) -> ClientData:
        a, b = self.rows(k)
        return ClientData(self.train_pixels[a:b], self.train_labels[a:b])

    def _stage(self, writers: Sequence[int]) -> None:
        """Lazy population: make `writers`' train examples the runner's rows (one block)."""
        writers = sorted(set(int(k) for k in writers))
        px, lb, off = gather(self.data, writers, "train")
        self.train_pixels = torch.from_numpy(px).to(self.device)
        self.train_labels = torch.from_numpy(lb).to(self.device)
        self._rows = {k: (int(off[i]), int(off[i + 1])) for i, k in enumerate(writers)}

    def generator(self, task: ClientTask) -> torch.Generator:
        g = torch.Generator()
        g.manual_seed(task.seed)
        return g

    def run_one(self, task: ClientTask, global_params: torch.Tensor) -> ClientResult:
        gp = global_params.to(self.device)
        own = self.client_data(task.client_index)
        gen = self.generator(task)
        with client_rng_scope(task.seed, self.device):
            if task.role == "attacker":
                mal = self.task.malicious(own)
                delta, metrics = self.attack.craft(task, self.model, gp, own, mal, self.hp, gen)
            else:
                delta, metrics = local_train(self.model, gp, own, self.hp, gen)
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
        from fl_core.backends import precision_scope

        if self.lazy:
            self._stage([t.client_index for t in tasks])
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
                    out = self.backend.train([tasks[j] for j in part], gp)
                trained.update(zip(part, out, strict=True))
                del out
            if t.role == "benign":
                yield i, trained.pop(i)
            else:
                with torch_threads(self.config.fl.threads), precision_scope(self.config.fl.precision, self.device):
                    res = self.run_one(t, gp)
                yield i, res


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with `n` intra-op threads: CPU conv/matmul reductions split work by thread, so
    the bits of a result depend on the thread count; fixing it makes a Ray actor (which
    Ray starts with one thread per CPU) and the driver agree exactly."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
