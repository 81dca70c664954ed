"""`sequential`: benign clients one after another in this process, one model reused in place.

It is the engine's reference path: each task runs `ClientRunner.run_one`, i.e.
`client.local_train` inside `client_rng_scope(task.seed)` with the task's CPU generator,
on data already on the device as tensors (no DataLoader). Its results are therefore
bit-identical to the engine's per-client loop, and it is the backend every other one is
validated against.

On a CPU it runs within a few percent of a bare SGD loop of the same steps (the per-step
framework work — a CPU `randperm` per epoch, an index gather and a uint8 → float
conversion of 20 images — is tiny next to the convolutions; see `BENCHMARKS.md`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch

from fl_core.backends import require_benign
from fl_core.types import ClientResult, ClientTask

if TYPE_CHECKING:
    from fl_core.client import ClientRunner


class SequentialBackend:
    name = "sequential"

    def __init__(self, runner: "ClientRunner"):
        self.runner = runner

    def train(self, tasks: Sequence[ClientTask], global_params: torch.Tensor) -> list[ClientResult]:
        require_benign(tasks)
        return [self.runner.run_one(t, global_params) for t in tasks]

    def chunk_size(self, n_tasks: int) -> int:
        """One client at a time: batching gains nothing here, and each update is passed on
        (to the server's running sum) as soon as it exists."""
        return 1
