"""`sequential`: benign clients one after another in this process, one model reused in place.

It is the engine's reference path: each task runs `training.benign_update`, i.e.
`training.local_train` inside `client_rng_scope(task.seed)` with the task's CPU generator,
on data already on the device as tensors (no DataLoader). Its results are therefore
bit-identical to the engine's per-client loop, and it is the backend every other one is
validated against.

On a CPU it runs within a few percent of a bare SGD loop of the same steps (the per-step
framework work — a CPU `randperm` per epoch, an index gather and a uint8 → float
conversion of 20 images — is tiny next to the convolutions; see `BENCHMARKS.md`).
"""

from __future__ import annotations

from typing import Sequence

import torch

from fl_core.backends.base import BackendContext, require_benign
from fl_core.training import Cohort, benign_update
from fl_core.types import ClientResult, ClientTask


class SequentialBackend:
    name = "sequential"

    def __init__(self, ctx: BackendContext):
        self.ctx = ctx

    def train(self, tasks: Sequence[ClientTask], global_params: torch.Tensor, cohort: Cohort) -> list[ClientResult]:
        require_benign(tasks)
        c = self.ctx
        return [benign_update(t, cohort, c.model, global_params, c.hp, c.device) for t in tasks]

    def chunk_size(self, n_tasks: int) -> int:
        """One client at a time: batching gains nothing here, and each update is passed on
        (to the server's running sum) as soon as it exists."""
        return 1
