"""Unconstrained boosted model replacement (Bagdasaryan et al. 2018; Bhagoji et al. 2019;
Sun et al. 2019 §2): the attacker scales its malicious update by β so that the aggregate
lands near its backdoored model. How the malicious model is trained, and which part of the
update is boosted, is the recipe's (`fl_core/attacks/recipes.py`; default `reference`:
Δ_benign + β·Δ_mal, the paper's code)."""

from __future__ import annotations

import torch

from fl_core.attacks.recipes import Recipe
from fl_core.client import ClientData, SGDParams
from fl_core.types import ClientTask, Delta


class ModelReplacement:
    def __init__(self, recipe: Recipe):
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
        return self.recipe.replacement(model, global_params, benign, malicious, hp, gen, task.boost)
