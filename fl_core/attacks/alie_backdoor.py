"""ALIE as a backdoor carrier (Baruch, Baruch & Goldberg, NeurIPS 2019, the backdooring
variant of "A Little Is Enough"): each attacker trains a backdoored model, then the round's
attackers keep their updates inside the band the benign updates span,

    Δ_j ← clamp(Δ_j, μ_j − |z|·σ_j, μ_j + |z|·σ_j)

per coordinate (μ, σ over the round's benign updates, ddof 0; z as `alie`: derived from n
and f, or `attack.params.z`), so that the band-based statistics of robust rules do not set
them apart, while the part of the backdoor that fits in the band gets through.

The paper's text was not available to us beyond its abstract; our reading of the authors'
code (moranant/attacking_distributed_learning `backdoor.py`, `BackdoorAttack`):
1. training: from the mean-updated model, epochs of SGD on the backdoor samples with loss
   CE + 4·Σ_layers MSE(w_layer, start_layer) (`main.py`: "in the paper it's 0.2", i.e.
   α·CE + (1 − α)·Σ MSE with α = 0.2, up to a factor 5; 5 epochs, batch 200, lr 0.1,
   weight decay 1e-4, the optimizer re-created per batch so its momentum never acts).
   Here: fl.local_epochs epochs of the ordinary client's minibatch SGD
   (fl_core.training.sgd_epochs, fl.client_lr) on own data ∪ D_mal (the task's relabelled
   backdoor set, the `union` recipe's data), with the gradient of that α-weighted loss,
   anchored at w_t: the attacker's `craft` runs before the round's benign updates exist,
   so it cannot start from the mean-updated model;
2. the trained model becomes the update w − w_t, unboosted (the authors turn it into a
   gradient with an extra ±η·μ, (start − (w + η·μ))/η, which we do not copy);
3. `np.clip` to [μ − z·σ, μ + z·σ] of the (attackers' own) gradients, the same vector for
   every attacker; here each attacker's own update is clipped to the benign band.
Omniscient only: the band of own-data knowledge would be that of the attackers' backdoored
updates, since `craft` returns one update, not an honest one beside it. Usable with the
semantic and the trigger backdoor tasks (`attack.backdoor`).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Iterator

from pydantic import Field

from fl_core.attacks.alie import check_derived_z, derived_z, mean_std
from fl_core.attacks.base import AttackSpec, register
from fl_core.plugins import Params

if TYPE_CHECKING:
    import torch


class ALIEBackdoorParams(Params):
    z: float | None = Field(
        None,
        description="half-width of the band in standard deviations (|z| is used); null derives z from the "
        "round's n updates and f attackers as alie does",
    )
    alpha: float = Field(
        0.2, gt=0, le=1,
        description="α, the weight of the backdoor cross-entropy; 1 − α weighs Σ_layers mean((w − w_t)²) "
        "(the paper's 0.2; 1 = plain training on own ∪ D_mal)",
    )


@contextlib.contextmanager
def distance_pull(model: "torch.nn.Module", alpha: float) -> Iterator[None]:
    """While the block runs, every parameter's gradient g becomes α·g + (1 − α)·2(w − a)/numel,
    the gradient of α·CE + (1 − α)·Σ_layers mean((w − a)²), with a the weights on entry."""
    anchors = [p.detach().clone() for p in model.parameters()]
    hooks = [p.register_hook(lambda g, p=p, a=a: alpha * g + (1.0 - alpha) * (2.0 / p.numel()) * (p.detach() - a))
             for p, a in zip(model.parameters(), anchors)]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


def clamp_to_band(rows: "torch.Tensor", known: "torch.Tensor", z: float, round_idx: int) -> "torch.Tensor":
    """Each row clamped per coordinate to [μ − |z|σ, μ + |z|σ] of `known` (float32 out)."""
    import torch

    mu, sigma = mean_std(known, round_idx)
    half = abs(z) * sigma
    return torch.clamp(rows.double(), mu - half, mu + half).float()


class ALIEBackdoor:
    knowledge = "omniscient"

    def __init__(self, z: float | None, alpha: float):
        self.z = z
        self.alpha = alpha

    def craft(self, task, model, global_params, benign, malicious, hp, gen):
        from fl_core.params import get_flat, set_flat
        from fl_core.training import sgd_epochs

        set_flat(model, global_params)
        with distance_pull(model, self.alpha):
            loss = sgd_epochs(model, benign.cat(malicious), hp, gen)
        return get_flat(model) - global_params, {"train_loss": loss}

    def forge(self, known, own, ctx, gen):
        z = self.z if self.z is not None else derived_z(ctx.cohort_size, ctx.num_attackers)
        forged = clamp_to_band(own, known, z, ctx.round_idx)
        changed = (forged != own).double().mean().item()
        return forged, {"alie_z": z, "alie_clamped_share": changed}


def _build(params: ALIEBackdoorParams, config) -> ALIEBackdoor:
    check_derived_z(params.z, config)
    return ALIEBackdoor(params.z, params.alpha)


register(AttackSpec("alie-backdoor", "ALIE (backdoor)", _build, ALIEBackdoorParams, rank=7,
                     check=lambda params, config: check_derived_z(params.z, config)))
