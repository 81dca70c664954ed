"""Constrain-and-scale (Bagdasaryan et al., AISTATS 2020, "How To Backdoor Federated
Learning" §4): the attacker trains on poisoned minibatches (the `mixed` recipe's batches:
`attack.params.poison_fraction` of every batch from D_mal, fl.local_epochs epochs over its own
images) with the loss

    L = α · L_class + (1 − α) · L_ano,   L_ano = ‖w − w_t‖₂

(their code's distance term, `model_dist_norm_var`: it keeps the update close to the global
model, which is what norm- and distance-based defenses inspect), then sends β (w − w_t).
Under clipping it also keeps ‖w − w_t‖ ≤ M/β by projecting after every step (the norm
constraint), so the boosted update passes clipping at M intact. α is ours to choose
(the paper tunes it per defense); the default 0.7 is stated in docs/ROBUSTNESS.md.
"""

from __future__ import annotations

from pydantic import Field

from fl_core.attacks.base import AttackSpec, PoisonParams, pgd_radius, register


class ConstrainScaleParams(PoisonParams):
    alpha: float = Field(
        0.7, gt=0, le=1,
        description="α, the weight of the classification loss; 1 − α weighs the anomaly term ‖w − w_t‖₂",
    )


class ConstrainAndScale:
    def __init__(self, alpha: float, poison_fraction: float):
        self.alpha = alpha
        self.poison_fraction = poison_fraction

    def craft(self, task, model, global_params, benign, malicious, hp, gen):
        import torch
        import torch.nn.functional as F

        from fl_core.attacks.pgd import project_l2
        from fl_core.attacks.recipes import Mixed
        from fl_core.params import get_flat, set_flat

        set_flat(model, global_params)
        anchors = [p.detach().clone() for p in model.parameters()]
        model.train()
        loss = torch.zeros(())
        for x, y in Mixed(self.poison_fraction).batches(benign, malicious, hp, gen):
            model.zero_grad(set_to_none=True)
            dist = torch.linalg.vector_norm(torch.cat([(p - a).reshape(-1) for p, a in zip(model.parameters(), anchors)]))
            loss = self.alpha * F.cross_entropy(model(x), y) + (1.0 - self.alpha) * dist
            loss.backward()
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(p.grad, alpha=-hp.lr)
            if task.radius is not None:
                set_flat(model, global_params + project_l2(get_flat(model) - global_params, task.radius))
        return task.boost * (get_flat(model) - global_params), {"train_loss": float(loss.detach())}


def _build(params: ConstrainScaleParams, config) -> ConstrainAndScale:
    return ConstrainAndScale(params.alpha, params.poison_fraction)


register(AttackSpec("constrain-and-scale", "constrain-and-scale", _build, ConstrainScaleParams,
                    radius=pgd_radius, rank=4))
