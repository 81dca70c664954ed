"""How a round's client tasks get trained. An executor returns results in TASK order,
whatever the completion order; actors are stateless workers (identity, role and seed
travel inside the task), so results never depend on who trained what."""

from __future__ import annotations

from typing import Protocol, Sequence

import torch

from fl_core.client import ClientRunner
from fl_core.types import ClientResult, ClientTask


class ClientExecutor(Protocol):
    def map(self, tasks: Sequence[ClientTask], global_params: torch.Tensor) -> list[ClientResult]:
        """Train every task from `global_params`; results aligned with `tasks`."""
        ...


class SerialExecutor:
    """All clients one after another in this process, one model reused in place."""

    def __init__(self, runner: ClientRunner):
        self.runner = runner

    def map(self, tasks: Sequence[ClientTask], global_params: torch.Tensor) -> list[ClientResult]:
        return self.runner.run(tasks, global_params)
