"""IPM, inner product manipulation (Xie, Koyejo & Gupta, UAI 2020, "Fall of Empires"): the
colluding attackers send −ε·mean(known), so that the aggregate's inner product with the
true mean turns negative while each attacker stays close to the benign updates (small ε:
Krum picks them; large ε: mean and median-type rules are dragged).

ε = 0.1 as epfml byzantine-robust-noniid-optimizer (`utils.py`) and FLPoison
(`attackers/ipm.py`, whose comment says small ε for Krum, large for median-type rules);
the paper's own value is unconfirmed (its text was not available to us). ByzFL's
InnerProductManipulation is the same map with τ = ε (its default τ = 2.0). Negation is
linear, so gradients (the papers') and our updates Δ = w − w_t give the same step. Under
own-data knowledge `known` is the attackers' own honest updates.
"""

from __future__ import annotations

from pydantic import Field

from fl_core.attacks.alie import mean_std
from fl_core.attacks.base import AttackSpec, HonestCraft, KnowledgeParams, register


class IPMParams(KnowledgeParams):
    epsilon: float = Field(
        0.1, gt=0,
        description="ε: the attackers send −ε·mean of what they know (0.1: epfml, FLPoison; ByzFL's τ)",
    )


class IPM(HonestCraft):
    def __init__(self, epsilon: float, knowledge):
        self.epsilon = epsilon
        self.knowledge = knowledge

    def forge(self, known, own, ctx, gen):
        mu, _ = mean_std(known, ctx.round_idx)
        return (-self.epsilon * mu).float().expand_as(own).clone(), {}


def _build(params: IPMParams, config) -> IPM:
    return IPM(params.epsilon, params.knowledge)


register(AttackSpec("ipm", "IPM", _build, IPMParams, rank=8, goal="untargeted"))
