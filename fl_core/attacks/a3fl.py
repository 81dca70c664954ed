"""A3FL (Zhang, Jia, Chen, Lin, Gong, NeurIPS 2023, "A3FL: Adversarially Adaptive Backdoor
Attacks to Federated Learning"): the attackers do not stamp a fixed pattern but optimise
their trigger each attacked round, against the current global model AND against a copy of
it that has been adversarially trained to unlearn the trigger, so that the trigger keeps
working after the benign clients (or a defense) push the model away from it.

The defining step (`learn`, once per round with attackers, before any client trains), as in
the authors' code (hfzhang31/A3FL @eb1bdc1, `fl_utils/attacker.py` `search_trigger` and
`get_adv_model`; defaults from `main/configs/config.yaml`):
- the trigger δ is a `size`×`size` patch (5) at (`row`, `col`) = (2, 2) (their mask
  `[2:7, 2:7]`), started at 0.5 and carried from round to round (`attack_state["trigger"]`);
- `trigger_epochs` (their `trigger_outter_epochs`, 200) passes over the attackers' data; each
  minibatch makes ONE signed-gradient step δ ← clip(δ − α·sign ∇_δ L, 0, 1), α = `trigger_lr`
  (0.01), on L = CE(θ(x ⊕ δ), y_t) + λ·w·CE(θ'(x ⊕ δ), y_t), every image relabelled to the
  target label (target-label images too, as their code), λ = `lam` (their
  `noise_loss_lambda`, 0.01);
- θ' is rebuilt from the global model θ every `adv_every` passes (their `dm_adv_K`, 1; never
  before the first pass ends: pass 0 has no adversarial term): `adv_epochs` (5) epochs of
  SGD (lr 0.01, momentum 0.9, weight decay 5e-4, their constants) on x ⊕ δ with the TRUE
  labels, i.e. θ' unlearns the current trigger; one θ' (their `dm_adv_model_count`, 1);
- w is the mean, over the parameters whose name contains "conv", of the cosine between the
  GRADIENTS of θ' and θ (their `.grad`): θ'’s is that of its last unlearning minibatch, θ's
  the sum of the backdoor-CE gradients of all trigger steps so far this round (their
  `model.grad` is never zeroed in `search_trigger`; ours starts at zero each round, theirs
  also holds whatever the shared local model last left there). The paper describes w as a
  similarity of the two models; BackFed (`backfed/poisons/a3fl.py`) uses the weights'
  cosine, 100 passes and K = 100 (so θ' is never built); we follow the authors' code.

`craft` (their `train_malicious`): fl.local_epochs epochs of SGD over the attacker's own
data, the first ⌊`poison_ratio`·B⌋ images of every minibatch (their `bkd_ratio`, 0.25 of 64)
stamped with the round's trigger and relabelled to the target label (in place: an image is
seen either clean or stamped in an epoch, as their `poison_input`). The update is then sent
like our other backdoor attacks: PGD under clipping (`pgd_iterations` passes, projection of
w − w_t onto M/β after each, boosted by β) and boosted model replacement β(w − w_t) otherwise.
Their code sends w − w_t as is (`scale_up` exists but is never called, no projection):
`boost: false` does that.

Where we differ from their code, and why:
- One trigger per round, learnt on the round's attackers' POOLED train data (the engine's
  `LearnedTrigger`). Their single `Attacker` object searches once per round, on the data of
  the first sampled adversary only, and all the round's adversaries then stamp that trigger.
- Images: uint8 28×28 greyscale (EMNIST, ink 0, background 255; the model's input is
  pixel/255, no normalisation). δ is optimised in float [0, 1] (their clamp [−2, 2] is in
  CIFAR-normalised units, so their α = 0.01 is ≈ 0.002 of the pixel range; ours is 0.01 of
  it) and `stamp` quantises it to round(255·δ) uint8, which is what clients and the
  evaluator feed the model (≤ 1/510 from the float trigger the search saw).
- Plain SGD in `craft` (the engine's `sgd_step`, the benign clients' optimiser) instead of
  their momentum 0.9 / weight decay 5e-4 / label smoothing 0.001; no data augmentation.
- The global model is in eval mode during the search (their `model.eval()`), θ' in train
  mode (their code never switches it back), so its dropout is active, drawn inside a scope
  seeded from Stream.TRIGGER.
- λ = 0 builds no θ' at all (its term is 0; saves the cost).

Cost (CPU, the CNN): `learn` makes `trigger_epochs` passes over the attackers' pooled data
(each batch forward and backward through the global model, and through θ' once built) and
⌊(trigger_epochs − 1)/adv_every⌋·adv_epochs unlearning epochs of θ'. With the
defaults that is 200 passes and 199 × 5 unlearning epochs: ≈ 900 epoch-equivalents, measured
on 200 images (batch 20, 2 threads) as 4.1 s for one pass without θ' and 18.8 s for each
further pass with its rebuild, i.e. ≈ 3 700 s per attacked round on the shared 2-core machine
under load (one plain epoch over the same images took 4.2 s there) — hundreds of benign rounds.
`trigger_epochs`, `adv_every` and `adv_epochs` reduce it (e.g. 20, 5, 2: ≈ 40 epochs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field, model_validator

from fl_core.attacks.base import AttackSpec, register, pgd_radius
from fl_core.plugins import Params

if TYPE_CHECKING:
    import torch

SIDE = 28
ADV_LR, ADV_MOMENTUM, ADV_DECAY = 0.01, 0.9, 5e-4  # get_adv_model's optimiser (their constants)


class A3FLParams(Params):
    row: int = Field(2, ge=0, description="top row of the trigger patch (the authors' mask starts at 2)")
    col: int = Field(2, ge=0, description="left column of the trigger patch (the authors' mask starts at 2)")
    size: int = Field(5, ge=1, le=SIDE, description="side of the square trigger patch, pixels (trigger_size: 5)")
    init: float = Field(0.5, ge=0, le=1, description="initial grey level of the patch in [0, 1] (theirs: 0.5)")
    trigger_epochs: int = Field(
        200, ge=1, description="passes over the attackers' pooled data per attacked round, one signed "
        "step per minibatch (trigger_outter_epochs: 200); cost is linear in it")
    trigger_lr: float = Field(0.01, gt=0, le=1, description="α: signed-gradient step on the trigger, in [0, 1] "
                              "pixel units (trigger_lr: 0.01)")
    lam: float = Field(0.01, ge=0, description="λ: weight of the adversarial model's backdoor loss "
                       "(noise_loss_lambda: 0.01); 0 builds no adversarial model")
    adv_epochs: int = Field(5, ge=1, description="epochs the adversarial copy trains to unlearn the trigger "
                            "(dm_adv_epochs: 5); cost is linear in it")
    adv_every: int = Field(1, ge=1, description="K: the adversarial copy is rebuilt every K trigger passes "
                           "(dm_adv_K: 1); K ≥ trigger_epochs never builds it")
    poison_ratio: float = Field(0.25, gt=0, le=1, description="share of each of the attacker's minibatches "
                                "stamped and relabelled, floor(ratio·B) images (bkd_ratio: 0.25)")
    pgd_iterations: int = Field(5, ge=1, description="P: PGD passes under clipping, projecting after each")
    boost: bool = Field(True, description="send like our other backdoor attacks (PGD onto M/β under clipping, "
                        "β-boosted otherwise); false: w − w_t as is, as the authors' code")

    @model_validator(mode="after")
    def _fits(self) -> "A3FLParams":
        for key, at in (("row", self.row), ("col", self.col)):
            if at + self.size > SIDE:
                raise ValueError(f"{key} + size must be at most {SIDE} (the patch must fit the image): "
                                 f"{key}={at}, size={self.size}")
        return self


def window(params: A3FLParams) -> tuple[slice, slice]:
    return slice(params.row, params.row + params.size), slice(params.col, params.col + params.size)


def quantise(trigger: "torch.Tensor") -> "torch.Tensor":
    """The float [0, 1] patch as the uint8 pixels clients and the evaluator stamp."""
    import torch

    return torch.round(trigger.clamp(0, 1) * 255).to(torch.uint8)


def paste(x: "torch.Tensor", trigger: "torch.Tensor", params: A3FLParams) -> "torch.Tensor":
    """Model inputs (n, 1, 28, 28) in [0, 1] with the float patch pasted in (differentiable
    in `trigger`): x·(1 − m) + δ·m, their `t*m + (1-m)*inputs`."""
    import torch.nn.functional as F

    r, c, s = params.row, params.col, params.size
    full = F.pad(trigger, (c, SIDE - c - s, r, SIDE - r - s))
    mask = F.pad(trigger.new_ones(s, s), (c, SIDE - c - s, r, SIDE - r - s))
    return x * (1 - mask) + full * mask


def conv_cosine(adv_grads: dict, grads: dict) -> float:
    """w: the mean over the parameters named *conv* of cos(∇θ', ∇θ) (their get_adv_model)."""
    import torch.nn.functional as F

    names = [n for n in grads if "conv" in n]
    cos = [F.cosine_similarity(adv_grads[n].reshape(-1), grads[n].reshape(-1), dim=0, eps=1e-8) for n in names]
    return float(sum(cos) / len(cos))


class A3FL:
    def __init__(self, params: A3FLParams, target: int, batch_size: int):
        self.p = params
        self.target = target
        self.batch_size = batch_size

    # -- the learned trigger ------------------------------------------------------------

    def initial(self, device=None) -> "torch.Tensor":
        import torch

        return torch.full((self.p.size, self.p.size), self.p.init, dtype=torch.float32, device=device)

    def stamp(self, pixels: "torch.Tensor", state: dict) -> "torch.Tensor":
        trigger = state["trigger"] if state else self.initial()
        out = pixels.clone()
        rows, cols = window(self.p)
        out[:, rows, cols] = quantise(trigger).to(out.device)
        return out

    def adversarial_model(self, model, x_stamped, labels, gen):
        """θ': a copy of the global model trained `adv_epochs` epochs to classify the stamped
        images correctly; returns it (train mode) and the gradients of its last minibatch."""
        import copy

        import torch
        import torch.nn.functional as F

        adv = copy.deepcopy(model)
        adv.train()
        opt = torch.optim.SGD(adv.parameters(), lr=ADV_LR, momentum=ADV_MOMENTUM, weight_decay=ADV_DECAY)
        for _ in range(self.p.adv_epochs):
            for idx in self._batches(len(labels), gen, labels.device):
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(adv(x_stamped[idx]), labels[idx]).backward()
                opt.step()
        grads = {n: p.grad.detach().clone() for n, p in adv.named_parameters()}
        adv.zero_grad(set_to_none=True)
        for p in adv.parameters():
            p.requires_grad_(False)  # only δ's gradient is wanted from its loss
        return adv, grads

    def _batches(self, n: int, gen, device):
        import torch

        perm = torch.randperm(n, generator=gen).to(device)
        return [perm[s : s + self.batch_size] for s in range(0, n, self.batch_size)]

    def trigger_step(self, trigger, x, model, adv=None, w: float = 0.0):
        """One signed step on one minibatch x (model inputs, unstamped): returns (new trigger,
        loss, the gradients of its backdoor CE w.r.t. the global model's conv parameters, the
        only ones w reads: skipping the dense layers' weight gradients saves time)."""
        import torch
        import torch.nn.functional as F

        t = trigger.detach().clone().requires_grad_(True)
        xs = paste(x, t, self.p)
        y = torch.full((len(x),), self.target, dtype=torch.long, device=x.device)
        params = [p for n, p in model.named_parameters() if "conv" in n]
        loss = F.cross_entropy(model(xs), y)
        if adv is not None:
            loss = loss + self.p.lam * w * F.cross_entropy(adv(xs), y)
        g = torch.autograd.grad(loss, [t, *params])
        new = (t.detach() - self.p.trigger_lr * g[0].sign()).clamp(0, 1)
        return new, float(loss.detach()), g[1:]

    def learn(self, ctx, state, gen):
        import torch

        from fl_core.models import CNN
        from fl_core.params import set_flat
        from fl_core.rng import client_rng_scope
        from fl_core.training import to_input

        dev = ctx.device
        model = CNN().to(dev)
        set_flat(model, ctx.global_params)
        model.eval()
        trigger = state["trigger"].to(dev) if state else self.initial(dev)
        x = to_input(ctx.data.pixels)
        labels = ctx.data.labels
        names = [n for n, _ in model.named_parameters() if "conv" in n]  # trigger_step's order
        grad_sum = {n: torch.zeros_like(p) for n, p in model.named_parameters() if "conv" in n}
        adv, w, loss = None, 0.0, 0.0
        # θ' trains and runs in train mode: its dropout uses the global RNG, scoped and seeded here
        scope_seed = int(torch.randint(0, 2**62, (1,), generator=gen))
        with client_rng_scope(scope_seed, dev):
            for it in range(self.p.trigger_epochs):
                if it % self.p.adv_every == 0 and it != 0 and self.p.lam > 0:
                    adv, adv_grads = self.adversarial_model(model, paste(x, trigger, self.p), labels, gen)
                    w = conv_cosine(adv_grads, grad_sum)
                for idx in self._batches(len(labels), gen, labels.device):
                    trigger, loss, g = self.trigger_step(trigger, x[idx], model, adv, w)
                    for n, gi in zip(names, g):
                        grad_sum[n] += gi
            with torch.no_grad():
                y = torch.full_like(labels, self.target)
                asr = float((model(paste(x, trigger, self.p)).argmax(1) == y).double().mean())
        return ({"trigger": trigger.detach().cpu()},
                {"a3fl_trigger_loss": loss, "a3fl_adv_weight": w, "a3fl_trigger_asr": asr})

    # -- the attacker's update ----------------------------------------------------------

    def poisoned_epochs(self, model, own, state: dict, hp, gen) -> float:
        """fl.local_epochs epochs of SGD on own data, ⌊ratio·B⌋ of each minibatch stamped."""
        import torch

        from fl_core.training import sgd_step, to_input

        model.train()
        loss = 0.0
        for _ in range(hp.epochs):
            perm = torch.randperm(len(own), generator=gen).to(own.labels.device)
            for s in range(0, len(own), hp.batch_size):
                idx = perm[s : s + hp.batch_size]
                px, y = own.pixels[idx], own.labels[idx].clone()
                k = int(self.p.poison_ratio * len(idx))  # their int(bkd_ratio * batch)
                if k:
                    px = torch.cat([self.stamp(px[:k], state), px[k:]])
                    y[:k] = self.target
                loss = sgd_step(model, to_input(px), y, hp.lr)
        return loss

    def craft(self, task, model, global_params, benign, malicious, hp, gen):
        from fl_core.attacks.pgd import project_l2
        from fl_core.params import get_flat, set_flat

        state = task.attack_state or {}
        set_flat(model, global_params)
        if self.p.boost and task.radius is not None:
            diff = global_params * 0
            for _ in range(self.p.pgd_iterations):
                loss = self.poisoned_epochs(model, benign, state, hp, gen)
                diff = project_l2(get_flat(model) - global_params, task.radius)
                set_flat(model, global_params + diff)
            return task.boost * diff, {"train_loss": loss}
        loss = self.poisoned_epochs(model, benign, state, hp, gen)
        scale = task.boost if self.p.boost else 1.0
        return scale * (get_flat(model) - global_params), {"train_loss": loss}


def _build(params: A3FLParams, config) -> A3FL:
    return A3FL(params, config.attack.target_label, config.fl.batch_size)


register(AttackSpec("a3fl", "A3FL (trigger)", _build, A3FLParams, radius=pgd_radius, rank=15, backdoor="trigger"))
