"""Norm-bounded attack by projected gradient descent (Sun et al. 2019 §2).

P times: train one pass (from the current point, not from w_t), then project w − w_t onto
the L2 ball of radius M/β around w_t — after EVERY pass, not once at the end, and the
un-boosted difference, not the boosted update. Finally send β (w − w_t), whose norm is ≤ M,
so the server's clipping at M leaves it intact.

`pass_kind`: `union` (paper) is one epoch over D_trn ∪ D_mal in minibatches; `original`
(reference code) is one epoch over D_trn then one step on all of D_mal as a single batch.
"""

from __future__ import annotations

import torch

from fl_core.client import ClientData, SGDParams, sgd_epochs, sgd_step, to_input
from fl_core.params import get_flat, set_flat
from fl_core.types import ClientTask, Delta


def project_l2(diff: torch.Tensor, radius: float) -> torch.Tensor:
    """Project a flat vector onto the L2 ball of `radius` around 0 (inside: unchanged)."""
    norm = float(torch.linalg.vector_norm(diff.double()))
    if norm <= radius:
        return diff
    return diff * (radius / norm)


class NormBoundedPGD:
    def __init__(self, iterations: int, pass_kind: str = "union"):
        self.iterations = iterations
        self.pass_kind = pass_kind

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
        assert task.radius is not None, "plan_round sets the PGD radius M/β"
        one_pass = SGDParams(1, hp.batch_size, hp.lr)
        union = benign.cat(malicious)
        set_flat(model, global_params)
        loss = 0.0
        for _ in range(self.iterations):
            if self.pass_kind == "union":
                loss = sgd_epochs(model, union, one_pass, gen)
            else:
                sgd_epochs(model, benign, one_pass, gen)
                model.train()
                loss = sgd_step(model, to_input(malicious.pixels), malicious.labels, hp.lr)
            diff = project_l2(get_flat(model) - global_params, task.radius)
            set_flat(model, global_params + diff)
        return task.boost * diff, {"train_loss": loss}
