"""The one client training loop: the only place SGD happens.

A client starts from the global weights w_t, runs plain SGD (no momentum) for E epochs over
its own data in minibatches, reshuffled each epoch with its task's generator, and returns
Δ = w − w_t. Attacks compose `sgd_epochs`/`local_train`, backends and `ClientRunner` call
`benign_update`; nobody copies the loop. This module imports nothing of the engine's
orchestration (runner, backends, attacks), so every one of them can import it.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

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


#: The memory format client training runs in: None (the default: every tensor as it is,
#: the fp32 path) or a torch.memory_format that `precision_scope` sets for the bf16 CPU path.
_MEMORY_FORMAT: contextvars.ContextVar[torch.memory_format | None] = contextvars.ContextVar(
    "fl_core_memory_format", default=None)


@contextlib.contextmanager
def memory_format_scope(fmt: torch.memory_format | None) -> Iterator[None]:
    """Train in `fmt` inside this scope (e.g. `torch.channels_last`): `sgd_step` puts the
    model's 4-D weights in that format before its forward, so oneDNN picks NHWC kernels;
    the values (and `params.get_flat`, which reads them in logical order) are unchanged."""
    token = _MEMORY_FORMAT.set(fmt)
    try:
        yield
    finally:
        _MEMORY_FORMAT.reset(token)


def current_memory_format() -> torch.memory_format | None:
    """The format `memory_format_scope` set, or None outside any."""
    return _MEMORY_FORMAT.get()


def apply_memory_format(model: torch.nn.Module) -> None:
    """Put `model`'s 4-D weights in the scope's memory format (a no-op outside a scope, and
    after the first call inside one). In place: the Parameter objects stay the same."""
    fmt = _MEMORY_FORMAT.get()
    if fmt is None:
        return
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() != 4:
                continue
            # by strides, not `is_contiguous(memory_format=…)`: a 1-input-channel weight
            # (conv1) passes that test in both formats, and oneDNN then keeps NCHW for it
            # (the meta tensor allocates nothing)
            if p.stride() != torch.empty(p.shape, device="meta", memory_format=fmt).stride():
                p.data = torch.empty_like(p, memory_format=fmt).copy_(p.data)


def sgd_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float) -> float:
    """One plain SGD step on the mean cross-entropy of the batch; returns the loss. Under
    `fl.precision: bf16` it runs inside `precision_scope` (autocast; channels-last on a
    CPU), with the weights, their gradients and this update in float32."""
    apply_memory_format(model)
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


@dataclass(frozen=True)
class Cohort:
    """One round's train examples on the device, and where each writer's rows are: what a
    backend or an attack needs of the data, nothing of the runner that staged it.

    Attributes:
        pixels: uint8 (N, 28, 28), every row the round may use.
        labels: int64 (N,).
        rows: writer index → its [start, stop) rows in `pixels`/`labels`.
    """

    pixels: torch.Tensor
    labels: torch.Tensor
    rows: Callable[[int], tuple[int, int]]

    def client(self, k: int) -> ClientData:
        a, b = self.rows(k)
        return ClientData(self.pixels[a:b], self.labels[a:b])


def task_generator(task: ClientTask) -> torch.Generator:
    """The task's own CPU generator (its shuffles), seeded by its derived seed."""
    g = torch.Generator()
    g.manual_seed(task.seed)
    return g


def benign_update(task: ClientTask, cohort: Cohort, model: torch.nn.Module, global_params: torch.Tensor,
                  hp: SGDParams, device: torch.device) -> ClientResult:
    """An honest client's result: `local_train` on its own rows with its own generator, inside
    its RNG scope (dropout), from `global_params` on `device`; the delta back on the CPU."""
    own = cohort.client(task.client_index)
    with client_rng_scope(task.seed, device):
        delta, metrics = local_train(model, global_params, own, hp, task_generator(task))
    return ClientResult(task.client_index, task.slot, task.role, len(own), delta.cpu(), metrics)


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
    """`fl.device`: `auto` is CUDA when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
