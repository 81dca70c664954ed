"""How a compromised client trains its malicious model (`attack.recipe`).

The paper says only "send β (w* − w_t)" and "project after every pass"; it does not say how
w* is trained. The recipes below are the three in use, registered by name; both attacks
(`model_replacement`, `pgd`) take one, so adding a recipe is one class and one line here.

| recipe | unconstrained attack sends | one PGD pass (then project onto M/β) |
|---|---|---|
| `reference` | Δ_benign + β·Δ_mal | fl.local_epochs epochs over own data, then one step on all of D_mal |
| `union` | β·Δ(own ∪ D_mal, fl.local_epochs epochs) | one epoch over own ∪ D_mal |
| `mixed` | β·Δ(mixed batches, fl.local_epochs epochs) | fl.local_epochs epochs of mixed batches |
| `project-boost` | β·(w_P − w_t): P passes as `reference`'s, no projection | as `reference` |

- `reference` is google-research/federated `targeted_attack/attacked_fedavg.py`, the code that
  made the paper's figures: `ClientExplicitBoosting` trains Δ_benign as any honest client
  (local_epochs epochs of minibatches over its own data) and Δ_mal as ONE SGD step on all of
  D_mal as a single batch (`Dataset.from_tensors`), both from w_t, and boosts only Δ_mal;
  `ClientProjectBoost` repeats P times {its benign dataset, which is `repeat(num_epochs)`;
  one full-batch step on D_mal; project w − w_t}. It is the default.
- `union` trains w* on D_trn ∪ D_mal and boosts all of it (Bagdasaryan et al.'s model
  replacement as most re-implementations read the paper). With a small own dataset w* is
  mostly "predict the target label": much stronger, and it damages every writer's
  source-label images (measure `collateral_rate`).
- `project-boost` is `ClientProjectBoost` as the paper's driver
  (`targeted_attack/emnist_with_targeted_attack.py`) builds it, the only attacker class that
  script ever constructs, with a bound that never binds: P = `pgd_iterations` passes (the
  driver's `client_round_num`, 5) of {its benign dataset, `repeat(num_epochs)`; one full-batch
  step on D_mal}, chained from w_t, and it sends β·(w_P − w_t), boosting ALL of it. It differs
  from `reference` (ExplicitBoosting: Δ_benign + β·Δ_mal, two separate trainings from w_t,
  only the one-step Δ_mal boosted, one pass) in three ways: P passes instead of one, the
  benign and malicious steps chained instead of both from w_t, and the benign part boosted
  too. Under `pgd` the two are the same attack (both passes are ClientProjectBoost's; the
  attack projects after each), so `pgd` + `project-boost` equals `pgd` + `reference` bit for
  bit. Unconstrained it projects nothing, which is not bit-identical to `pgd` with a huge M:
  that one re-sets the model to w_t + (w − w_t) after every pass (float rounding) and turns
  clipping on, hence the unweighted mean and β = C·K. Under model replacement the attack's
  params have no `pgd_iterations` (`RecipeParams`), so P is the driver's 5 there.
  Where we differ from the driver (as every recipe here): the benign data are reshuffled
  each epoch and batched per epoch (the driver's `repeat(E).batch(B)` is unshuffled and lets
  a batch straddle two epochs), and the driver's discarded benign training before the passes
  (it only yields the metrics and n_k) is not run.
- `mixed` is Bagdasaryan et al. 2018's poisoned minibatches: every minibatch holds
  round(poison_fraction·B) D_mal images (cycled in a seeded order) and the rest own images.

Every recipe reports the attacker's own example count n_k as its FedAvg weight (the
reference code reports the benign examples it trained on), and starts from w_t.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Callable, Protocol

import torch

from fl_core.training import ClientData, SGDParams, local_train, sgd_epochs, sgd_step, to_input
from fl_core.config import SimulationConfig
from fl_core.params import get_flat, set_flat
from fl_core.types import Delta


def full_batch_step(model: torch.nn.Module, malicious: ClientData, lr: float) -> float:
    """One SGD step on all of D_mal as a single batch (the reference code's Δ_mal)."""
    model.train()
    return sgd_step(model, to_input(malicious.pixels), malicious.labels, lr)


class Recipe(Protocol):
    name: str

    def replacement(
        self, model: torch.nn.Module, w_t: torch.Tensor, own: ClientData, mal: ClientData,
        hp: SGDParams, gen: torch.Generator, beta: float,
    ) -> tuple[Delta, dict]:
        """The unconstrained attacker's update to send (boost applied), from w_t."""
        ...

    def pgd_pass(
        self, model: torch.nn.Module, own: ClientData, mal: ClientData, hp: SGDParams, gen: torch.Generator
    ) -> float:
        """One PGD pass, in place from the model's current weights; returns the last loss.
        The projection is the attack's job, after every pass."""
        ...


class Reference:
    name = "reference"

    def replacement(self, model, w_t, own, mal, hp, gen, beta):
        d_benign, metrics = local_train(model, w_t, own, hp, gen)
        set_flat(model, w_t)  # Δ_mal is taken from w_t, not from the benign end point
        mal_loss = full_batch_step(model, mal, hp.lr)
        d_mal = get_flat(model) - w_t
        return d_benign + beta * d_mal, {**metrics, "malicious_loss": mal_loss}

    def pgd_pass(self, model, own, mal, hp, gen):
        sgd_epochs(model, own, hp, gen)
        return full_batch_step(model, mal, hp.lr)


class Union:
    name = "union"

    def replacement(self, model, w_t, own, mal, hp, gen, beta):
        delta, metrics = local_train(model, w_t, own.cat(mal), hp, gen)
        return beta * delta, metrics

    def pgd_pass(self, model, own, mal, hp, gen):
        return sgd_epochs(model, own.cat(mal), SGDParams(1, hp.batch_size, hp.lr), gen)


class Mixed:
    """Every minibatch: `b_mal` = max(1, round(p·B)) D_mal images, then up to B − b_mal own
    images (at least 1); an epoch is one pass over the own images. D_mal is consumed in a
    seeded permutation, re-drawn when exhausted, so every D_mal image is seen equally often."""

    name = "mixed"

    def __init__(self, poison_fraction: float):
        self.poison_fraction = poison_fraction

    def split(self, batch_size: int) -> tuple[int, int]:
        """(own, malicious) images per minibatch."""
        b_mal = max(1, int(round(self.poison_fraction * batch_size)))
        return max(1, batch_size - b_mal), b_mal

    def batches(self, own: ClientData, mal: ClientData, hp: SGDParams, gen: torch.Generator):
        """Yield the (x, y) minibatches of `hp.epochs` epochs: own images in a fresh seeded
        order each epoch, each batch topped up with the next b_mal D_mal images."""
        b_own, b_mal = self.split(hp.batch_size)
        # D_mal is never empty: every target writer owns a source-label image (select_backdoor)
        assert len(mal) > 0, "mixed batches need a non-empty D_mal"
        dev = own.labels.device
        mal_order = torch.randperm(len(mal), generator=gen).to(dev)
        cursor = 0
        for _ in range(hp.epochs):
            perm = torch.randperm(len(own), generator=gen).to(dev)
            for start in range(0, len(own), b_own):
                idx = perm[start : start + b_own]
                take = []
                while sum(len(t) for t in take) < b_mal:
                    if cursor == len(mal_order):
                        mal_order, cursor = torch.randperm(len(mal), generator=gen).to(dev), 0
                    n = min(b_mal - sum(len(t) for t in take), len(mal_order) - cursor)
                    take.append(mal_order[cursor : cursor + n])
                    cursor += n
                m_idx = torch.cat(take)
                yield (to_input(torch.cat([own.pixels[idx], mal.pixels[m_idx]])),
                       torch.cat([own.labels[idx], mal.labels[m_idx]]))

    def epochs(self, model, own: ClientData, mal: ClientData, hp: SGDParams, gen: torch.Generator) -> float:
        model.train()
        loss = 0.0
        for x, y in self.batches(own, mal, hp, gen):
            loss = sgd_step(model, x, y, hp.lr)
        return loss

    def replacement(self, model, w_t, own, mal, hp, gen, beta):
        set_flat(model, w_t)
        loss = self.epochs(model, own, mal, hp, gen)
        return beta * (get_flat(model) - w_t), {"train_loss": loss}

    def pgd_pass(self, model, own, mal, hp, gen):
        return self.epochs(model, own, mal, hp, gen)


class ProjectBoost:
    """P chained passes of {own epochs, one full-batch D_mal step} from w_t, sent β·(w_P − w_t)."""

    name = "project-boost"

    def __init__(self, passes: int):
        self.passes = passes

    def replacement(self, model, w_t, own, mal, hp, gen, beta):
        set_flat(model, w_t)
        # no projection between passes: the driver's bound that never binds, and no
        # w_t + (w − w_t) round trip that would change float bits
        benign_loss = mal_loss = 0.0
        for _ in range(self.passes):
            benign_loss = sgd_epochs(model, own, hp, gen)
            mal_loss = full_batch_step(model, mal, hp.lr)
        return beta * (get_flat(model) - w_t), {"train_loss": benign_loss, "malicious_loss": mal_loss}

    def pgd_pass(self, model, own, mal, hp, gen):
        return Reference().pgd_pass(model, own, mal, hp, gen)


# The recipes' registry (name → RecipeSpec, torch-free) is `fl_core.attacks.base.RECIPES`;
# `attack.params.recipe` of the attacks that take one chooses.
