"""Norm-bounded attack by projected gradient descent (Sun et al. 2019 §2).

P times: one pass of the recipe (from the current point, not from w_t), then project
w − w_t onto the L2 ball of radius M/β around w_t — after EVERY pass, not once at the end,
and the un-boosted difference, not the boosted update. Finally send β (w − w_t), whose norm
is ≤ M, so the server's clipping at M leaves it intact. What a pass trains on is the
recipe's (`fl_core/attacks/recipes.py`; default `reference`: fl.local_epochs epochs over
the attacker's own data then one full-batch step on D_mal, as `ClientProjectBoost`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fl_core.attacks.base import AttackSpec, PGDParams, make_recipe, pgd_radius, register

if TYPE_CHECKING:
    import torch

    from fl_core.attacks.recipes import Recipe


def project_l2(diff: "torch.Tensor", radius: float) -> "torch.Tensor":
    """Project a flat vector onto the L2 ball of `radius` around 0 (inside: unchanged)."""
    import torch

    norm = float(torch.linalg.vector_norm(diff.double()))
    if norm <= radius:
        return diff
    return diff * (radius / norm)


def projected_passes(recipe: "Recipe", iterations: int, radius: float, model, global_params,
                     benign, malicious, hp, gen) -> tuple["torch.Tensor", float]:
    """P recipe passes from w_t, projecting w − w_t onto the `radius` ball after each;
    returns (w − w_t, the last pass's loss). The model ends at w_t + (w − w_t)."""
    from fl_core.params import get_flat, set_flat

    set_flat(model, global_params)
    loss, diff = 0.0, global_params * 0
    for _ in range(iterations):
        loss = recipe.pgd_pass(model, benign, malicious, hp, gen)
        diff = project_l2(get_flat(model) - global_params, radius)
        set_flat(model, global_params + diff)
    return diff, loss


def recipe_update(recipe: "Recipe", iterations: int, task, model, global_params, benign, malicious, hp,
                  gen) -> tuple["torch.Tensor", dict]:
    """The update an attack built on a recipe sends: PGD (P passes, projection onto the task's
    radius M/β, boosted by β) when the planner gave a radius (clipping is on), boosted model
    replacement otherwise. Neurotoxin and DBA change what the recipe sees, not this."""
    if task.radius is None:
        return recipe.replacement(model, global_params, benign, malicious, hp, gen, task.boost)
    diff, loss = projected_passes(recipe, iterations, task.radius, model, global_params, benign, malicious, hp, gen)
    return task.boost * diff, {"train_loss": loss}


class NormBoundedPGD:
    def __init__(self, iterations: int, recipe: "Recipe"):
        self.iterations = iterations
        self.recipe = recipe

    def craft(self, task, model, global_params, benign, malicious, hp, gen):
        assert task.radius is not None, "plan_round sets the PGD radius M/β"
        diff, loss = projected_passes(self.recipe, self.iterations, task.radius, model, global_params,
                                      benign, malicious, hp, gen)
        return task.boost * diff, {"train_loss": loss}


def _build(params: PGDParams, config) -> NormBoundedPGD:
    return NormBoundedPGD(params.pgd_iterations, make_recipe(params, config))


register(AttackSpec("pgd", "PGD", _build, PGDParams, radius=pgd_radius, needs_bound=True, rank=2))
