"""Norm-bounded attack by projected gradient descent (Sun et al. 2019 §2).

P times: one pass of the recipe (from the current point, not from w_t), then project
w − w_t onto the L2 ball of radius M/β around w_t — after EVERY pass, not once at the end,
and the un-boosted difference, not the boosted update. Finally send β (w − w_t), whose norm
is ≤ M, so the server's clipping at M leaves it intact. What a pass trains on is the
recipe's (`fl_core/attacks/recipes.py`; default `reference`: fl.local_epochs epochs over
the attacker's own data then one full-batch step on D_mal, as `ClientProjectBoost`).
"""

from __future__ import annotations

import torch

from fl_core.attacks.recipes import Recipe
from fl_core.client import ClientData, SGDParams
from fl_core.params import get_flat, set_flat
from fl_core.types import ClientTask, Delta


def project_l2(diff: torch.Tensor, radius: float) -> torch.Tensor:
    """Project a flat vector onto the L2 ball of `radius` around 0 (inside: unchanged)."""
    norm = float(torch.linalg.vector_norm(diff.double()))
    if norm <= radius:
        return diff
    return diff * (radius / norm)


class NormBoundedPGD:
    def __init__(self, iterations: int, recipe: Recipe):
        self.iterations = iterations
        self.recipe = recipe

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
        set_flat(model, global_params)
        loss = 0.0
        for _ in range(self.iterations):
            loss = self.recipe.pgd_pass(model, benign, malicious, hp, gen)
            diff = project_l2(get_flat(model) - global_params, task.radius)
            set_flat(model, global_params + diff)
        return task.boost * diff, {"train_loss": loss}
