"""Chameleon (Dai & Li, ICML 2023, "Chameleon: Adapting to Peer Images for Planting Durable
Backdoors in Federated Learning"): the attacker shapes the model's *features* so that its
poisoned images sit among the target class's own images (their peers), which benign rounds
keep reinforcing, and away from their source class; the backdoor then outlives the attack
longer (`attack.stop_round`; the report's lifespan measures it).

The attacker's round, from w_t:
1. encoder phase: the CNN without its last Linear (its penultimate features, L2-normalised)
   is trained with the supervised-contrastive loss `supcon_loss` (temperature T = 0.07) on
   minibatches of its own images plus D_mal (already relabelled to the target label: the
   target writers' 7s labelled 1 under `semantic`, its own stamped images under `trigger`);
   the last Linear (the head) is left as in w_t;
2. head phase: the encoder is frozen (requires_grad off, and the optimiser holds only the
   head) and the head is trained with cross-entropy on the same kind of minibatches;
3. the update sent: β·(w − w_t). Under clipping (`defense.norm_bound` M) w − w_t stays in the
   ball of radius M/β (the planner's `pgd_radius`), as the PGD attack; otherwise it is boosted
   model replacement, as Neurotoxin's path.

Authors' code read: ybdai7/Chameleon-durable-backdoor at 83e8f13d679b6296decec8558c78ab56e1503e24
(`utils/losses.py` SupConLoss, `training.py`, `models/resnet.py` SupConResNet_backbone,
`utils/params_pixel_trigger_cifar10.yaml`). Where we follow the code over the paper, or differ:
- the loss is the code's SupConLoss, not the textbook one: anchors whose label is the target
  weigh their positives `target_weight` times (yaml `contrastive_loss_scale_weight: 6`, every
  config), the mean divides by the number of positives before weighting, and an anchor with
  no positive in the batch adds 0 but still counts in the batch mean (the textbook loss has
  NaN there). T/base_T = 1 (both 0.07). Its `mask_cross_feature` term is the identity in every
  config (`contrastive_loss_down_scale_weight: 1`) and is left out.
- the features are the penultimate activations, L2-normalised (SupConResNet_backbone ends in
  F.normalize; it has no projection head, so neither do we); read through a hook on the last
  Linear, so `fl_core/models.py` is unchanged.
- hyperparameters are the CIFAR-10 pixel-trigger yaml's (encoder: 10 epochs, lr 0.005,
  milestones 3,5,7,9, γ 0.1; head: 3 epochs, lr 0.001, milestones 3,5, γ 0.005; momentum 0.9,
  weight decay 5e-4 in both; the EMNIST yaml, for a ResNet-18, has encoder lr 0.05 and
  γ 0.005, head lr 0.01). The code steps its MultiStepLR at the *start* of each epoch, so
  epoch e (from 1) runs at lr·γ^#{milestones ≤ e}; we do the same.
- batches: the code puts `poison_batch_len` = 7 poisoned images in each batch of 64
  (poison_fraction 7/64) and adds N(0, 0.01) pixel noise to them; we build the batches with
  the `mixed` recipe (`recipes.Mixed`: own images + poison_fraction of D_mal, fl.batch_size)
  and add no noise. An epoch is one pass over the attacker's own images (a writer's ~100 at
  batch 20: 5 steps), where the authors' is their 25-batch "secret dataset" (25 steps): the
  same epochs and lrs train far less here (docs/ROBUSTNESS.md has what that does).
- projection: the code projects the whole model onto its s_norm ball after every step, in
  both phases, which in the head phase also rescales the "frozen" encoder. We project after
  every step too, but in the head phase only the head, onto what the encoder's move leaves of
  the ball (√(r² − ‖Δ_encoder‖²)): the encoder stays frozen bit for bit and ‖w − w_t‖ ≤ r.
- BackFed (thinh-dao/BackFed `clients/chameleon_malicious_client.py`) sets `require_grad`
  (a typo) so its encoder is never frozen; here it is, and a test checks it.
- the code sends the model unboosted (`scale_weights: 1`); we boost by the task's β as our
  other backdoor attacks, so cells compare like with like.
"""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING, Iterator

from pydantic import Field, field_validator

from fl_core.attacks.base import AttackSpec, PoisonParams, pgd_radius, register

if TYPE_CHECKING:
    import torch


class ChameleonParams(PoisonParams):
    poison_fraction: float = Field(
        7 / 64, gt=0, lt=1,
        description="share of each minibatch drawn from D_mal, in both phases (the authors' "
        "poison_batch_len 7 of batch_size 64)",
    )
    temperature: float = Field(0.07, gt=0, description="T of the supervised-contrastive loss (authors: 0.07)")
    target_weight: float = Field(
        6.0, gt=0,
        description="weight of the target-label anchors' positives in the contrastive loss (authors' "
        "contrastive_loss_scale_weight: 6; 1 is the textbook SupCon loss)",
    )
    encoder_epochs: int = Field(10, ge=1, description="epochs of the contrastive encoder phase (authors: 10)")
    encoder_lr: float = Field(
        0.005, gt=0, description="initial lr of the encoder phase (authors' CIFAR-10 yaml: 0.005)")
    encoder_milestones: list[int] = Field(
        [3, 5, 7, 9], description="epochs (from 1, increasing) from which the encoder lr is multiplied by "
        "encoder_gamma once more (authors: 3, 5, 7, 9)")
    encoder_gamma: float = Field(
        0.1, gt=0, le=1, description="encoder lr decay factor at each milestone (authors: 0.1)")
    head_epochs: int = Field(3, ge=1, description="epochs of the head phase, encoder frozen (authors: 3)")
    head_lr: float = Field(0.001, gt=0, description="initial lr of the head phase (authors' CIFAR-10 yaml: 0.001)")
    head_milestones: list[int] = Field(
        [3, 5], description="epochs (from 1, increasing) from which the head lr is multiplied by head_gamma "
        "once more (authors: 3, 5)")
    head_gamma: float = Field(0.005, gt=0, le=1, description="head lr decay factor at each milestone (authors: 0.005)")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum of both phases (authors: 0.9)")
    weight_decay: float = Field(5e-4, ge=0, description="SGD weight decay of both phases (authors: 5e-4)")

    @field_validator("encoder_milestones", "head_milestones")
    @classmethod
    def _increasing(cls, v: list[int]) -> list[int]:
        if any(m < 1 for m in v) or any(b <= a for a, b in zip(v, v[1:])):
            raise ValueError("epochs ≥ 1 in increasing order, e.g. [3, 5]")
        return v


def lr_at(lr: float, milestones: list[int], gamma: float, epoch: int) -> float:
    """The lr of epoch `epoch` (from 1): the authors call MultiStepLR.step() before each epoch."""
    return lr * gamma ** sum(m <= epoch for m in milestones)


def supcon_loss(features: "torch.Tensor", labels: "torch.Tensor", temperature: float = 0.07,
                target: int | None = None, target_weight: float = 1.0) -> "torch.Tensor":
    """The authors' supervised-contrastive loss (utils/losses.py; see the module docstring).

    For anchor i with positives P(i) (same label, j ≠ i) and
    log p_ij = z_i·z_j/T − log Σ_{k≠i} exp(z_i·z_k/T):
        ℓ_i = −(w_i / |P(i)|) Σ_{j∈P(i)} log p_ij   (0 if P(i) is empty),
    w_i = target_weight if labels[i] == target else 1; the loss is the mean of ℓ_i over all B
    anchors.

    Args:
        features: [B, d], B ≥ 2, already L2-normalised.
        labels: [B] integer labels.
    """
    import torch

    b = features.shape[0]
    assert b >= 2, "a contrastive batch needs two examples"
    logits = features @ features.T / temperature
    # for numerical stability (the row max cancels in log p)
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    not_self = ~torch.eye(b, dtype=torch.bool, device=features.device)
    positive = (labels.view(-1, 1) == labels.view(1, -1)) & not_self
    denom = (torch.exp(logits) * not_self).sum(1, keepdim=True)
    log_prob = logits - torch.log(denom)
    weight = positive.to(features.dtype)
    if target is not None:
        row = 1.0 + (target_weight - 1.0) * (labels == target).to(features.dtype)
        weight = weight * row.view(-1, 1)
    count = positive.sum(1).clamp(min=1).to(features.dtype)
    return -((weight * log_prob).sum(1) / count).mean()


def head_module(model: "torch.nn.Module") -> "torch.nn.Module":
    """The classification head: the model's last Linear (the CNN's fc2)."""
    from torch import nn

    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears, "Chameleon needs a model whose last layer is a Linear"
    return linears[-1]


def split_params(model: "torch.nn.Module", w_t_params: list) -> tuple[list, list]:
    """(encoder, head) of `model`: lists of (parameter, its w_t copy) pairs, in
    `model.parameters()` order; `w_t_params` is that order's detached copies of w_t."""
    head_ids = {id(p) for p in head_module(model).parameters()}
    pairs = list(zip(model.parameters(), w_t_params, strict=True))
    return [pa for pa in pairs if id(pa[0]) not in head_ids], [pa for pa in pairs if id(pa[0]) in head_ids]


@contextlib.contextmanager
def penultimate(model: "torch.nn.Module") -> Iterator[dict]:
    """While the block runs, each forward stores the head's input (the encoder's output) in
    the yielded dict under "z": the CNN without its last layer, with the graph kept."""
    store: dict = {}
    hook = head_module(model).register_forward_pre_hook(lambda mod, args: store.__setitem__("z", args[0]))
    try:
        yield store
    finally:
        hook.remove()


@contextlib.contextmanager
def frozen(params: list) -> Iterator[None]:
    """requires_grad off for `params` while the block runs (restored after: the runner's
    model trains the next client)."""
    old = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, r in zip(params, old):
            p.requires_grad_(r)


def moved_sq(pairs: list) -> float:
    """Σ‖p − a‖² over (parameter, w_t) pairs, in float64."""
    import torch

    with torch.no_grad():
        return sum(float(torch.sum((p.double() - a.double()) ** 2)) for p, a in pairs)


def project_params(pairs: list, radius: float) -> None:
    """Scale the move p − a of the (parameter, w_t) `pairs` onto the L2 ball of `radius`
    around w_t, in place (inside: unchanged); the norm in float64, as `pgd.project_l2`."""
    import torch

    norm = math.sqrt(moved_sq(pairs))
    if norm <= radius:
        return
    with torch.no_grad():
        for p, a in pairs:
            p.copy_(a + (p - a) * (radius / norm))


class Chameleon:
    def __init__(self, params: ChameleonParams, target: int):
        from fl_core.attacks.recipes import Mixed

        self.p = params
        self.target = target
        self.batches = Mixed(params.poison_fraction)

    def _epochs(self, model, trained, own, mal, hp, gen, lr, milestones, gamma, epochs, loss_fn, project):
        """`epochs` epochs of `mixed` minibatches, SGD (momentum, weight decay) on `trained`
        only, the lr stepped per epoch as the authors', `project` after every step; returns
        the last loss."""
        import torch

        from fl_core.training import SGDParams, apply_memory_format

        apply_memory_format(model)
        opt = torch.optim.SGD(trained, lr=lr, momentum=self.p.momentum, weight_decay=self.p.weight_decay)
        model.train()
        loss = 0.0
        for e in range(1, epochs + 1):
            for g in opt.param_groups:
                g["lr"] = lr_at(lr, milestones, gamma, e)
            for x, y in self.batches.batches(own, mal, SGDParams(1, hp.batch_size, lr), gen):
                opt.zero_grad(set_to_none=True)
                out = loss_fn(x, y)
                out.backward()
                opt.step()
                project()
                loss = float(out.detach())
        return loss

    def train_encoder(self, model, w_t_params, own, mal, hp, gen, radius) -> float:
        """Phase 1: SupCon on the penultimate features; the head is not trained."""
        import torch.nn.functional as F

        p = self.p
        encoder, _ = split_params(model, w_t_params)
        with penultimate(model) as store:
            def loss_fn(x, y):
                model(x)
                return supcon_loss(F.normalize(store["z"].flatten(1), dim=1), y, p.temperature,
                                   self.target, p.target_weight)

            project = (lambda: None) if radius is None else (lambda: project_params(encoder, radius))
            return self._epochs(model, [q for q, _ in encoder], own, mal, hp, gen, p.encoder_lr, p.encoder_milestones,
                                p.encoder_gamma, p.encoder_epochs, loss_fn, project)

    def train_head(self, model, w_t_params, own, mal, hp, gen, radius) -> tuple[float, float | None]:
        """Phase 2: cross-entropy on the head alone, the encoder frozen; under a radius the
        head is projected onto what the encoder's move leaves of the ball. Returns (last
        loss, the head's radius or None)."""
        import torch.nn.functional as F

        p = self.p
        encoder, head = split_params(model, w_t_params)
        head_radius = None if radius is None else math.sqrt(max(radius * radius - moved_sq(encoder), 0.0))
        project = (lambda: None) if head_radius is None else (lambda: project_params(head, head_radius))
        with frozen([q for q, _ in encoder]):
            loss = self._epochs(model, [q for q, _ in head], own, mal, hp, gen, p.head_lr, p.head_milestones,
                                p.head_gamma, p.head_epochs, lambda x, y: F.cross_entropy(model(x), y), project)
        return loss, head_radius

    def craft(self, task, model, global_params, benign, malicious, hp, gen):
        from fl_core.params import get_flat, set_flat

        set_flat(model, global_params)
        # w_t per parameter (detached copies), the anchors of the projections
        w_t_params = [q.detach().clone() for q in model.parameters()]
        supcon = self.train_encoder(model, w_t_params, benign, malicious, hp, gen, task.radius)
        ce, head_radius = self.train_head(model, w_t_params, benign, malicious, hp, gen, task.radius)
        diff = get_flat(model) - global_params
        metrics = {"train_loss": ce, "contrastive_loss": supcon}
        if head_radius is not None:
            metrics["head_radius"] = head_radius
        return task.boost * diff, metrics


def _build(params: ChameleonParams, config) -> Chameleon:
    return Chameleon(params, config.attack.target_label)


register(AttackSpec("chameleon", "Chameleon", _build, ChameleonParams, radius=pgd_radius, rank=17))
