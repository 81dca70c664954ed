"""Unconstrained boosted model replacement (Bagdasaryan et al. 2018; Bhagoji et al. 2019;
Sun et al. 2019 §2): the attacker scales its malicious update by β so that the aggregate
lands near its backdoored model. How the malicious model is trained, and which part of the
update is boosted, is the recipe's (`fl_core/attacks/recipes.py`; default `reference`:
Δ_benign + β·Δ_mal, the paper's code)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fl_core.attacks.base import AttackSpec, RecipeParams, make_recipe, register

if TYPE_CHECKING:
    from fl_core.attacks.recipes import Recipe


class ModelReplacement:
    def __init__(self, recipe: "Recipe"):
        self.recipe = recipe

    def craft(self, task, model, global_params, benign, malicious, hp, gen):
        return self.recipe.replacement(model, global_params, benign, malicious, hp, gen, task.boost)


def _build(params: RecipeParams, config) -> ModelReplacement:
    return ModelReplacement(make_recipe(params, config))


register(AttackSpec("model-replacement", "unconstrained", _build, RecipeParams, rank=1))
