"""How a round's client tasks get trained. An executor returns results in TASK order,
whatever the completion order; actors are stateless workers (identity, role and seed
travel inside the task), so results never depend on who trained what.

An executor may also `stream` a round: yield (task position, result) pairs as clients
finish, so the server can fold each update into a running sum and drop it (a 1,000-client
round then never holds 1,000 updates, `fl_core.round.RoundFold`). `map` stays for callers
that want the list."""

from __future__ import annotations

from typing import Iterator, Protocol, Sequence

import torch

from fl_core.client import ClientRunner
from fl_core.types import ClientResult, ClientTask


class ClientExecutor(Protocol):
    def map(self, tasks: Sequence[ClientTask], global_params: torch.Tensor) -> list[ClientResult]:
        """Train every task from `global_params`; results aligned with `tasks`."""
        ...


class StreamingExecutor(ClientExecutor, Protocol):
    def stream(self, tasks: Sequence[ClientTask], global_params: torch.Tensor) -> Iterator[tuple[int, ClientResult]]:
        """Train every task from `global_params`; yield (position in `tasks`, result) once
        per task, in any order, as soon as each is ready."""
        ...


def stream_results(executor: ClientExecutor, tasks: Sequence[ClientTask],
                   global_params: torch.Tensor) -> Iterator[tuple[int, ClientResult]]:
    """(position, result) pairs from `executor`: its `stream` when it has one, else its
    `map`'s list (a plain `ClientExecutor`, e.g. a test's wrapper)."""
    stream = getattr(executor, "stream", None)
    if stream is not None:
        return stream(tasks, global_params)
    return enumerate(executor.map(tasks, global_params))


class SerialExecutor:
    """All clients one after another in this process, one model reused in place."""

    def __init__(self, runner: ClientRunner):
        self.runner = runner

    def map(self, tasks: Sequence[ClientTask], global_params: torch.Tensor) -> list[ClientResult]:
        return self.runner.run(tasks, global_params)

    def stream(self, tasks: Sequence[ClientTask], global_params: torch.Tensor) -> Iterator[tuple[int, ClientResult]]:
        return self.runner.run_iter(tasks, global_params)
