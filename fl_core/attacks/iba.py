"""IBA (Nguyen et al., NeurIPS 2023, "IBA: Towards Irreversible Backdoor Attacks in Federated
Learning"): the trigger is not a fixed pattern but a generator G that makes a small
image-dependent perturbation, x̃ = clamp(x + ε·G(x), 0, 1), trained so that the current model
already reads x̃ as the target label (little for the model to learn, so a small update that
lasts); the attackers then train their local model on clean and G-poisoned batches under
PGD (the update stays inside the norm ball, so clipping keeps it), optionally only on the
coordinates benign training moves least (a Neurotoxin-style mask), for durability.

Our reading of the authors' code (sail-research/iba @ 2536c81: `fl_trainer.py`, `iba_helpers.py`,
`attack_models/autoencoders.py`, `exps/iba_mnist_fedavg.sh`) on the trigger task
(`attack.backdoor: trigger`), as a `fl_core.attacks.base.LearnedTrigger`:
1. `learn`, once per round with attackers, before any client trains: G (the authors' MNIST
   generator, `MNISTAutoencoder`: conv encoder, transposed-conv decoder, BatchNorm, tanh, for
   1×28×28 in [0, 1]) takes `atk_epochs` epochs of minibatches over the round's attackers'
   pooled train images (shuffled from Stream.TRIGGER), minimising CE(f_w(x̃), target) with the
   classifier f_w frozen in eval mode (`_train_attack_model`) and G in train mode, with the
   code's generator optimiser: SGD(atk_lr, momentum 0.9, weight decay 1e-4), made afresh
   each round (`_create_adv_optimizer`), so no optimiser state crosses rounds. The state is
   G's `state_dict` (weights and BatchNorm buffers, keys `generator.<name>`) and the round's ε
   (`eps`). `{}` is the initial G: every conv weight and bias drawn as torch's default init
   (kaiming-uniform, a = √5; bias U(±1/√fan_in)) from Stream.TRIGGER key `INIT_KEY`.
2. `craft`, per attacker: every minibatch of its own data (fl.batch_size, fl.local_epochs
   epochs, plain SGD at fl.client_lr: the engine's client loop) gives the loss
   α·CE(f(x), y) + (1 − α)·CE(f(x̃), target) (attack_alpha 0.5, every image poisoned:
   attack_portion 1.0), x̃ stamped by the round's G in eval mode (the code's `tgtmodel.eval()`);
   under clipping w − w_t is projected onto the L2 ball of radius M/β after every step (the
   code's project_frequency 1) and β (w − w_t) is sent (norm ≤ M); without clipping β (w − w_t)
   (boosted model replacement, as DBA and Neurotoxin here; `attack.boost: 1` gives the code's
   model_replacement False). With `mask_ratio` r the gradients are multiplied by a 0/1 mask that
   keeps the int(r·d) coordinates with the smallest |∇ CE| of the attacker's own clean data at
   w_t (the code's `get_grad_mask`, ratio 0.30 under its neurotoxin mode).
3. ε: the code trains and poisons with ε_t = max(atk_test_eps, atk_eps·(1 − eps_decay)^s) and
   tests the global model with the same ε_t (`iba_test(test_eps=cur_training_eps)`); s counts
   rounds from the start of its poisoning phase, here from `attack.start_round`.
4. `stamp` (what `backdoor_acc` measures, and what D_mal in `craft` is) is x̃ quantised back to
   uint8 (round(255·x̃)), the pixels every model here sees, with G in eval mode. Its ε is
   `eval_eps` when set (the paper's test ε 0.05: the stealthier trigger of its tables), else
   the ε_t G was last trained at (the code's measure; atk_eps before any learning).

Where we differ from the authors' code, and why:
- The round's attackers pool their data to train ONE shared G per round on the global model
  w_t (our LearnedTrigger contract); the code has a single attacker that trains G at the end of
  its round on its own local (poisoned) model and uses it from the next round on.
- No warm-up phase: the code trains the classifier cleanly (alpha 1, no PGD) and only G until
  the attacker's local backdoor accuracy reaches 0.85, then poisons and decays ε; we poison
  from `attack.start_round` on. In the poisoning phase the code retrains G every other round
  ("alternative training"); we retrain it every attacked round.
- MNIST settings, not CIFAR's: atk_lr 0.001 and atk_model_train_epoch 3 (exps/iba_mnist_fedavg.sh;
  CIFAR: 1e-4 and 10; BackFed `poisons/iba.py`: Adam at 0.01 until a local ASR of 0.7).
- Clamp to [0, 1]: the code's MNIST attacker and test images are unnormalised [0, 1] as ours
  (`utils._load_mnist_dataset`), but its `clip_image` clamps x̃ to [-1, 1], so its x̃ goes
  down to −ε below black; ours stays a valid image (uint8 could not hold it). Its benign
  clients' loaders normalise with (0.1307, 0.3081) (`utils.get_dataloader`), a mismatch with
  the attacker's we do not copy.
- The classifier's local optimiser is the engine's plain SGD (the code: momentum 0.9, weight
  decay 1e-4, lr decayed by γ per round) over fl.local_epochs (the code's
  adversarial_local_training_period equals its benign local_train_period, 2).
- The mask's gradient is of all the attacker's own data as one batch (the code zeroes the
  gradient before each batch, so it keeps the last batch's only), with no cumulative mask
  across rounds (the code's `historical_grad_mask`).
- G is trained on float x̃ (no quantisation: the rounding has no gradient); what models see is
  quantised.

`honest_control: true` is our control, not part of IBA: G is learnt each attacked round as
above, but the attackers send honest updates. G is an input-specific perturbation optimised
against the model, so at ε = 0.3 (±76 grey levels) it fools even a clean model (on the embedded
writers after the clean warm-up, the first learnt G made the clean w_30 read 83% of the
attackers' images as the target); that control's backdoor_acc is the part of IBA's that is an
adversarial example rather than a backdoor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field, model_validator

from fl_core.attacks.base import AttackSpec, pgd_radius, register
from fl_core.plugins import Params

if TYPE_CHECKING:
    import torch

#: Stream.TRIGGER key of the initial generator's draw: two keys, so it never meets a round's
#: one-key (round_idx,) stream.
INIT_KEY = (0, 0x1BA)
#: Images per generator forward when stamping (the evaluator stamps its whole test set).
STAMP_CHUNK = 2048


class IBAParams(Params):
    atk_eps: float = Field(0.3, gt=0, le=1, description="ε of x + ε·G(x) in training (pixel units in [0, 1]); "
                           "authors' atk_eps 0.3")
    atk_test_eps: float = Field(0.05, gt=0, le=1, description="floor of the decaying training ε; the authors' "
                                "atk_test_eps 0.05")
    eps_decay: float = Field(0.001, ge=0, lt=1, description="ε_t = max(atk_test_eps, atk_eps·(1 − eps_decay)^s), s = "
                             "rounds since attack.start_round; authors' default 0.001")
    eval_eps: float | None = Field(None, gt=0, le=1, description="ε that backdoor_acc stamps with; null: the ε_t "
                                   "the generator was last trained at (authors' code); 0.05: the paper's test ε")
    atk_lr: float = Field(0.001, gt=0, description="generator SGD learning rate (authors' MNIST script: 0.001; "
                          "CIFAR-10: 1e-4)")
    atk_momentum: float = Field(0.9, ge=0, lt=1, description="generator SGD momentum (authors: 0.9)")
    atk_weight_decay: float = Field(1e-4, ge=0, description="generator SGD weight decay (authors: 1e-4)")
    atk_epochs: int = Field(3, ge=1, description="generator epochs over the pooled attackers' data per attacked "
                            "round (authors' MNIST atk_model_train_epoch 3)")
    atk_max_images: int | None = Field(None, ge=1, description="train the generator on at most this many of the "
                                       "pooled images (a seeded subset each round; null: all); a CPU-cost knob")
    attack_alpha: float = Field(0.5, ge=0, lt=1, description="α: the attacker's loss α·CE(clean) + (1 − α)·CE(poisoned)"
                                "; authors' 0.5")
    mask_ratio: float | None = Field(None, gt=0, lt=1, description="null: no mask; else the share of coordinates "
                                     "(smallest |clean gradient| at w_t) the attacker trains, Neurotoxin-style "
                                     "(authors' neurotoxin mode: 0.30)")

    honest_control: bool = Field(False, description="a control, not the attack: G is learnt as usual but the "
                                 "attackers train honestly, so backdoor_acc measures G as an adversarial "
                                 "perturbation of an unpoisoned model (read IBA's backdoor_acc against it)")

    @model_validator(mode="after")
    def _floor_below_start(self) -> "IBAParams":
        if self.atk_test_eps > self.atk_eps:
            raise ValueError(f"atk_test_eps ({self.atk_test_eps}) must be at most atk_eps ({self.atk_eps}): "
                             "it is the floor the training ε decays to")
        return self


def make_generator(device: "torch.device | str" = "cpu") -> "torch.nn.Module":
    """The authors' `MNISTAutoencoder` (attack_models/autoencoders.py), uninitialised (meta
    tensors materialised, values undefined): callers load a state or `seeded_init`.
    Built on the meta device so that no draw touches torch's global RNG."""
    import torch
    from torch import nn

    with torch.device("meta"):
        g = nn.Sequential(
            nn.Sequential(  # encoder: 1×28×28 → 64×2×2
                nn.Conv2d(1, 16, 3, stride=3, padding=1), nn.BatchNorm2d(16), nn.ReLU(True),
                nn.MaxPool2d(2, stride=2),
                nn.Conv2d(16, 64, 3, stride=2, padding=1), nn.BatchNorm2d(64), nn.ReLU(True),
                nn.MaxPool2d(2, stride=1),
            ),
            nn.Sequential(  # decoder: 64×2×2 → 1×28×28 in (−1, 1)
                nn.ConvTranspose2d(64, 128, 3, stride=2), nn.BatchNorm2d(128), nn.ReLU(True),
                nn.ConvTranspose2d(128, 64, 5, stride=3, padding=1), nn.BatchNorm2d(64), nn.ReLU(True),
                nn.ConvTranspose2d(64, 1, 2, stride=2, padding=1), nn.BatchNorm2d(1), nn.Tanh(),
            ),
        )
    return g.to_empty(device=device)


def seeded_init(g: "torch.nn.Module", gen: "torch.Generator") -> "torch.nn.Module":
    """torch's default init of every conv weight and bias, drawn from `gen` in module order;
    BatchNorm to weight 1, bias 0, running mean 0, variance 1. In place; returns `g`."""
    import math

    import torch
    from torch import nn

    with torch.no_grad():
        for m in g.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                w = torch.empty(m.weight.shape)
                nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=gen)
                fan_in, _ = nn.init._calculate_fan_in_and_fan_out(w)
                bound = 1.0 / math.sqrt(fan_in)
                b = torch.empty(m.bias.shape).uniform_(-bound, bound, generator=gen)
                m.weight.copy_(w), m.bias.copy_(b)
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()  # ones, zeros, and the running statistics reset
    return g


def poison(x: "torch.Tensor", g: "torch.nn.Module", eps: float) -> "torch.Tensor":
    """x̃ = clamp(x + ε·G(x), 0, 1) for float images x (B, 1, 28, 28) in [0, 1]."""
    import torch

    return torch.clamp(x + eps * g(x), 0.0, 1.0)


def quantise(x: "torch.Tensor") -> "torch.Tensor":
    """Float images in [0, 1] (B, 1, 28, 28) → uint8 (B, 28, 28): round(255·x), the inverse of
    `fl_core.training.to_input` on the pixel grid."""
    import torch

    return torch.round(x.squeeze(1) * 255.0).to(torch.uint8)


class IBA:
    def __init__(self, params: IBAParams, config):
        self.p = params
        self.seed = config.seed
        self.target = config.attack.target_label
        self.start = config.attack.start_round
        self.batch_size = config.fl.batch_size

    # -- ε and the generator's state -----------------------------------------------------

    def eps_at(self, round_idx: int) -> float:
        """ε_t = max(atk_test_eps, atk_eps·(1 − eps_decay)^s), s = rounds since attack.start_round."""
        s = max(0, round_idx - self.start)
        return max(self.p.atk_test_eps, self.p.atk_eps * (1.0 - self.p.eps_decay) ** s)

    def generator(self, state: dict, device) -> "torch.nn.Module":
        """G with the weights of `state` (`{}`: the seeded initial G), on `device`."""
        from fl_core.rng import Stream, torch_generator

        g = make_generator(device)
        if not state:
            return seeded_init(g, torch_generator(self.seed, Stream.TRIGGER, *INIT_KEY))
        prefix = "generator."
        g.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, strict=True)
        return g

    def stamp_eps(self, state: dict) -> float:
        if self.p.eval_eps is not None:
            return self.p.eval_eps
        return float(state["eps"]) if state else self.eps_at(self.start)

    def stamp(self, pixels: "torch.Tensor", state: dict) -> "torch.Tensor":
        """uint8 (n, 28, 28) → round(255·clamp(x + ε·G(x), 0, 1)), G of `state` in eval mode,
        ε = `stamp_eps` (the measure of backdoor_acc)."""
        return self.stamp_with(pixels, state, self.stamp_eps(state))

    def stamp_with(self, pixels: "torch.Tensor", state: dict, eps: float) -> "torch.Tensor":
        import torch

        from fl_core.training import to_input

        g = self.generator(state, pixels.device).eval()
        with torch.no_grad():
            parts = [quantise(poison(to_input(pixels[i : i + STAMP_CHUNK]), g, eps))
                     for i in range(0, len(pixels), STAMP_CHUNK)]
        return torch.cat(parts) if parts else pixels.clone()

    # -- the generator's round: learn -----------------------------------------------------

    def learn(self, ctx, state: dict, gen: "torch.Generator") -> tuple[dict, dict]:
        from fl_core.training import torch_threads

        # at fl.threads, as clients train and the evaluator measures: the bits of a CPU
        # reduction depend on the thread count, and the simulation calls learn outside any scope
        with torch_threads(ctx.config.fl.threads):
            return self._learn(ctx, state, gen)

    def _learn(self, ctx, state: dict, gen: "torch.Generator") -> tuple[dict, dict]:
        import torch
        import torch.nn.functional as F

        from fl_core.models import CNN
        from fl_core.params import set_flat
        from fl_core.training import to_input

        dev = ctx.device
        eps = self.eps_at(ctx.round_idx)
        g = self.generator(state, dev).train()
        with torch.device("meta"):
            clf = CNN()
        clf = clf.to_empty(device=dev)
        set_flat(clf, ctx.global_params)
        clf.eval().requires_grad_(False)  # f_w frozen: only G learns (the code's _train_attack_model)
        opt = torch.optim.SGD(g.parameters(), lr=self.p.atk_lr, momentum=self.p.atk_momentum,
                              weight_decay=self.p.atk_weight_decay)
        pixels = ctx.data.pixels
        if self.p.atk_max_images is not None and len(pixels) > self.p.atk_max_images:
            pick = torch.randperm(len(pixels), generator=gen)[: self.p.atk_max_images]
            pixels = pixels[pick.to(pixels.device)]
        n = len(pixels)
        loss_sum = hits = 0.0
        for _ in range(self.p.atk_epochs):
            loss_sum = hits = 0.0
            perm = torch.randperm(n, generator=gen).to(pixels.device)
            for start in range(0, n, self.batch_size):
                x = to_input(pixels[perm[start : start + self.batch_size]])
                t = torch.full((len(x),), self.target, dtype=torch.long, device=x.device)
                logits = clf(poison(x, g, eps))
                loss = F.cross_entropy(logits, t)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += float(loss.detach()) * len(x)
                hits += float((logits.detach().argmax(1) == t).sum())
        new = {f"generator.{k}": v.detach().to("cpu").clone() for k, v in g.state_dict().items()}
        new["eps"] = torch.tensor(eps, dtype=torch.float64)
        # the last epoch's mean generator loss and the share of x̃ the frozen w_t read as target
        return new, {"iba_generator_loss": loss_sum / max(n, 1), "iba_local_asr": hits / max(n, 1),
                     "iba_eps": eps}

    # -- the attacker's local model: craft ------------------------------------------------

    def grad_mask(self, model, global_params, own) -> "torch.Tensor":
        """1 on the int(r·d) coordinates with the smallest |∇ CE| of `own` (one batch) at w_t
        (ties: the lower index first), 0 elsewhere."""
        import torch
        import torch.nn.functional as F

        from fl_core.params import set_flat
        from fl_core.training import to_input

        set_flat(model, global_params)
        model.train()  # the code's get_grad_mask
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(to_input(own.pixels)), own.labels).backward()
        grad = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        model.zero_grad(set_to_none=True)
        keep = int(grad.numel() * self.p.mask_ratio)
        order = torch.argsort(grad.abs(), stable=True)
        mask = torch.zeros_like(grad)
        mask[order[:keep]] = 1.0
        return mask

    def craft(self, task, model, global_params, benign, malicious, hp, gen):
        import contextlib

        import torch
        import torch.nn.functional as F

        from fl_core.attacks.neurotoxin import masked_gradients
        from fl_core.attacks.pgd import project_l2
        from fl_core.params import get_flat, set_flat
        from fl_core.training import apply_memory_format, to_input

        if self.p.honest_control:
            from fl_core.training import local_train

            return local_train(model, global_params, benign, hp, gen)
        # D_mal is our own stamping of every own image (attack_portion 1.0), not the task's bars
        poisoned = self.stamp_with(benign.pixels, task.attack_state or {}, self.eps_at(task.round_idx))
        target = torch.full_like(benign.labels, self.target)
        mask = self.grad_mask(model, global_params, benign) if self.p.mask_ratio is not None else None
        set_flat(model, global_params)
        model.train()
        a = self.p.attack_alpha
        clean_loss = poison_loss = 0.0
        n = len(benign)
        with masked_gradients(model, mask) if mask is not None else contextlib.nullcontext():
            for _ in range(hp.epochs):
                perm = torch.randperm(n, generator=gen).to(benign.labels.device)
                for start in range(0, n, hp.batch_size):
                    idx = perm[start : start + hp.batch_size]
                    apply_memory_format(model)
                    model.zero_grad(set_to_none=True)
                    lc = F.cross_entropy(model(to_input(benign.pixels[idx])), benign.labels[idx])
                    lp = F.cross_entropy(model(to_input(poisoned[idx])), target[idx])
                    (a * lc + (1.0 - a) * lp).backward()
                    with torch.no_grad():
                        for p in model.parameters():
                            p.add_(p.grad, alpha=-hp.lr)
                    if task.radius is not None:  # PGD after every step (the code's project_frequency 1)
                        set_flat(model, global_params + project_l2(get_flat(model) - global_params, task.radius))
                    clean_loss, poison_loss = float(lc.detach()), float(lp.detach())
        diff = get_flat(model) - global_params
        metrics = {"train_loss": clean_loss, "poison_loss": poison_loss}
        if mask is not None:
            metrics["frozen_share"] = float(1.0 - mask.mean())
        return task.boost * diff, metrics


def _build(params: IBAParams, config) -> IBA:
    return IBA(params, config)


register(AttackSpec("iba", "IBA", _build, IBAParams, radius=pgd_radius, rank=16, backdoor="trigger"))
