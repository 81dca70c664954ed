"""The backend shape (`fl.backend`): what a backend is built from, what it does, and the
registry of backends (`fl_core.backends` registers `sequential` and `vectorized`, built on
use). Torch-free at import: a config's `fl.backend` is checked against the registry without
torch. The backends import this module, never the package, so the package may name them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Literal, Protocol, Sequence

from fl_core.plugins import Registry

if TYPE_CHECKING:
    import torch

    from fl_core.training import Cohort, SGDParams
    from fl_core.types import ClientResult, ClientTask


@dataclass(frozen=True)
class BackendContext:
    """What a backend is built from, once per process.

    Attributes:
        model: the engine's model on `device` (architecture and dropout are read from it;
            `sequential` trains it in place).
        hp: the clients' SGD hyper-parameters.
        device: where training runs.
        chunk: `fl.vectorized_chunk` (clients per lock-step chunk, or `auto`).
    """

    model: torch.nn.Module
    hp: SGDParams
    device: torch.device
    chunk: int | Literal["auto"] = "auto"


class ClientBackend(Protocol):
    name: str

    def train(self, tasks: Sequence[ClientTask], global_params: torch.Tensor, cohort: Cohort) -> list[ClientResult]:
        """Train benign `tasks` from `global_params` (already on the device) on their rows in
        `cohort`; results aligned with `tasks`, deltas as flat float32 CPU tensors."""
        ...

    def chunk_size(self, n_tasks: int) -> int:
        """How many of a round's `n_tasks` benign tasks to train in one `train` call: the
        runner hands them over in chunks of this size and passes each chunk's results on
        before training the next, so a round holds one chunk's updates at a time."""
        ...


def require_benign(tasks: Sequence[ClientTask]) -> None:
    """Backends train benign clients only: attackers go to the attack plug-in."""
    for t in tasks:
        if t.role != "benign":
            raise ValueError(f"backends train benign clients only; task {t} goes to the attack plug-in")


@dataclass(frozen=True)
class BackendSpec:
    """A registered backend: its `fl.backend` name and how it is built from a context."""

    name: str
    build: Callable[[BackendContext], ClientBackend]


#: name → BackendSpec; `auto` is not a backend but a choice among these (`AUTO_BY_DEVICE`).
BACKENDS: Registry[BackendSpec] = Registry("backend", "fl.backend")

