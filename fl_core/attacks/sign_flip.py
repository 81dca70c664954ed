"""Sign flipping: the attackers send the opposite of the benign direction.

- omniscient (default): every attacker sends −mean(known), the round's benign mean, as
  ByzFL's SignFlipping (which cites Allen-Zhu et al., ICLR 2021);
- own-data: each attacker sends −(its own honest update), as FLPoison
  (`attackers/signflipping.py`): it knows nothing else.
Negation is linear, so gradients and our updates Δ = w − w_t give the same step.
"""

from __future__ import annotations

from fl_core.attacks.alie import mean_std
from fl_core.attacks.base import AttackSpec, HonestCraft, KnowledgeParams, register


class SignFlip(HonestCraft):
    def __init__(self, knowledge):
        self.knowledge = knowledge

    def forge(self, known, own, ctx, gen):
        if self.knowledge == "own-data":
            return -own, {}
        mu, _ = mean_std(known, ctx.round_idx)
        return (-mu).float().expand_as(own).clone(), {}


def _build(params: KnowledgeParams, config) -> SignFlip:
    return SignFlip(params.knowledge)


register(AttackSpec("sign-flip", "sign flip", _build, KnowledgeParams, rank=9, goal="untargeted"))
