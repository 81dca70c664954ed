"""Neurotoxin (Zhang et al., ICML 2022, "Neurotoxin: Durable Backdoors in Federated
Learning"): the attacker writes its backdoor into the coordinates that benign training moves
least, so that the honest rounds after the attack overwrite less of it (a longer lifespan:
`attack.stop_round` and the report's backdoor lifespan measure it).

Our reading of the reference code (jhcknzzm/Federated-Learning-Backdoor, `grad_mask_cv`):
1. the attacker's own benign update Δ_benign (honest local training from w_t on its own data,
   the usual fl.local_epochs epochs) stands in for the benign clients' direction;
2. its `top_k` share of coordinates with the largest |Δ_benign| is frozen: every gradient of
   the attacker's training is multiplied by a 0/1 mask that is 0 there (the reference code's
   `gradmask_ratio` is the kept share, 1 − top_k);
3. the training itself is the configured recipe under PGD (P passes, projection onto M/β after
   each; `attack.params.pgd_iterations`) when clipping is on, and boosted model replacement otherwise.
The update sent is exactly 0 on the frozen coordinates.
"""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING, Iterator

from pydantic import Field

from fl_core.attacks.base import AttackSpec, PGDParams, make_recipe, pgd_radius, register

if TYPE_CHECKING:
    import torch

    from fl_core.attacks.recipes import Recipe


class NeurotoxinParams(PGDParams):
    top_k: float = Field(
        0.01, gt=0, lt=1,
        description="share of coordinates (largest |benign update|) the attack leaves untouched; "
        "the reference code's gradmask_ratio = 1 − top_k",
    )


def keep_mask(benign_update: "torch.Tensor", top_k: float) -> "torch.Tensor":
    """0 on the ceil(top_k·d) coordinates with the largest |Δ_benign| (ties: the lower index
    first, a stable sort), 1 elsewhere."""
    import torch

    k = max(1, math.ceil(top_k * benign_update.numel()))
    order = torch.argsort(benign_update.abs(), descending=True, stable=True)
    mask = torch.ones_like(benign_update)
    mask[order[:k]] = 0.0
    return mask


@contextlib.contextmanager
def masked_gradients(model: "torch.nn.Module", mask: "torch.Tensor") -> Iterator[None]:
    """Multiply every parameter's gradient by its slice of the flat `mask` (parameter order
    of `fl_core.params.get_flat`) while the block runs."""
    hooks, offset = [], 0
    for p in model.parameters():
        m = mask[offset : offset + p.numel()].view_as(p)
        hooks.append(p.register_hook(lambda g, m=m: g * m))
        offset += p.numel()
    assert offset == mask.numel(), "mask and model disagree"
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


class Neurotoxin:
    def __init__(self, top_k: float, iterations: int, recipe: "Recipe"):
        self.top_k = top_k
        self.iterations = iterations
        self.recipe = recipe

    def craft(self, task, model, global_params, benign, malicious, hp, gen):
        from fl_core.attacks.pgd import recipe_update
        from fl_core.training import local_train

        d_benign, _ = local_train(model, global_params, benign, hp, gen)
        mask = keep_mask(d_benign, self.top_k)
        with masked_gradients(model, mask):
            delta, metrics = recipe_update(self.recipe, self.iterations, task, model, global_params,
                                           benign, malicious, hp, gen)
        return delta * mask, {**metrics, "frozen_share": float(1.0 - mask.mean())}


def _build(params: NeurotoxinParams, config) -> Neurotoxin:
    return Neurotoxin(params.top_k, params.pgd_iterations, make_recipe(params, config))


register(AttackSpec("neurotoxin", "Neurotoxin", _build, NeurotoxinParams, radius=pgd_radius, rank=3))
