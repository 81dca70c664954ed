"""Unconstrained boosted model replacement (Bagdasaryan et al. 2018; Bhagoji et al. 2019;
Sun et al. 2019 §2): train w* from w_t on D_trn ∪ D_mal for the usual epochs, then send
Δ = β (w* − w_t) so that the aggregate lands near w*."""

from __future__ import annotations

import torch

from fl_core.client import ClientData, SGDParams, local_train
from fl_core.types import ClientTask, Delta


class ModelReplacement:
    def craft(
        self,
        task: ClientTask,
        model: torch.nn.Module,
        global_params: torch.Tensor,
        benign: ClientData,
        malicious: ClientData,
        hp: SGDParams,
        gen: torch.Generator,
    ) -> tuple[Delta, dict]:
        delta, metrics = local_train(model, global_params, benign.cat(malicious), hp, gen)
        return task.boost * delta, metrics
