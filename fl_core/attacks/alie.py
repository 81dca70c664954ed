"""ALIE, "A Little Is Enough" (Baruch, Baruch & Goldberg, NeurIPS 2019): the colluding
attackers of a round all send one vector that sits, coordinate by coordinate, z standard
deviations away from the mean of what they know, small enough that median- and
distance-based rules keep choosing it:

    x_j = μ_j + z·σ_j      (our update convention, Δ = w − w_t)

μ, σ: mean and standard deviation over `known` (the round's benign updates when omniscient,
the attackers' own honest updates under own-data). z from the cohort size n and the
attackers f: s = ⌊n/2 + 1⌋ − f benign workers must sit further from the mean than x for the
attackers to hold a majority, so z = Φ⁻¹((n − f − s)/(n − f)).

Where we follow code (the paper's text was not available to us beyond its abstract):
- z: the formula of FLPoison `attackers/alie.py` and epfml byzantine-robust-noniid-optimizer
  `codes/attacks/alittle.py`; the authors' code (moranant/attacking_distributed_learning
  `main.py`) takes z on the command line (`--num_std`, default 1.5). `attack.params.z`
  overrides the derived value.
- sign: the authors' code (`malicious.py`, DriftAttack) sends μ_g − z·σ_g on *gradients*,
  which the server subtracts (w ← w − η·g). Our updates are Δ = w − w_t ≈ −η·g, so the same
  step is μ_Δ + z·σ_Δ: that is what we send. ByzFL's ALittleIsEnough sends μ_g + τ·σ_g on
  the gradients its framework feeds it, the opposite step (μ_Δ − τ·σ_Δ); FLPoison also
  writes +z·σ; epfml agrees with the authors.
- σ: the population standard deviation (1/k, ddof 0), as the authors' `np.var`; ByzFL's
  code uses ddof 1 (its docstring 1/n). tests/fl_core/test_crosscheck_byzfl_attacks.py maps
  one onto the other.
- knowledge: the paper's attackers are non-omniscient and the authors' code computes μ, σ
  over the attackers' own gradients (`knowledge: own-data`); the default here is the
  round hook's `omniscient`, as FLPoison, ByzFL and Blades run it (and as the Byzantine
  comparison needs: one attacker alone has σ = 0 and would send its honest update).
All attackers of a round send the same vector. The derived z is small for small cohorts,
since the quantile is (⌈n/2⌉ − 1)/(n − f): n = 10 gives z = 0 (the mean itself) for f = 2
and z ≈ −0.14 for f = 1; n = 50, f = 10 gives z ≈ 0.25.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import TYPE_CHECKING

from pydantic import Field

from fl_core.attacks.base import AttackSpec, HonestCraft, KnowledgeParams, register

if TYPE_CHECKING:
    import torch


def derived_z(n: int, f: int) -> float:
    """z = Φ⁻¹((n − f − s)/(n − f)) with s = ⌊n/2 + 1⌋ − f (n: cohort size, f: attackers).

    Raises ValueError where the quantile is not in (0, 1) (n ≤ 2, or f > n/2: the attackers
    already hold a majority), naming the parameter that fixes it."""
    s = math.floor(n / 2 + 1) - f
    p = (n - f - s) / (n - f) if n > f else float("nan")
    if not 0.0 < p < 1.0:
        raise ValueError(
            f"ALIE's z = Φ⁻¹((n − f − s)/(n − f)) is undefined for n = {n} updates and f = {f} attackers "
            f"(quantile {p:.4g}); set attack.params.z"
        )
    return NormalDist().inv_cdf(p)


def mean_std(known: "torch.Tensor", round_idx: int) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Per-coordinate mean and population standard deviation (ddof 0) of the rows of
    `known`, in float64."""
    if known.shape[0] == 0:
        raise ValueError(
            f"round {round_idx}: every update of the cohort is an attacker's, so an omniscient attack "
            "knows no benign update; use attack.params.knowledge: own-data or a smaller attack.fraction"
        )
    k = known.double()
    return k.mean(dim=0), k.std(dim=0, correction=0)


def check_derived_z(z: float | None, config) -> None:
    """When z is derived, refuse (before any round runs) a schedule whose rounds leave it
    undefined: under `every-round` f = round(ε·C·K) of n = C·K, under `fixed-frequency` f = 1;
    under `random-sampling` f varies per round (a round with f > n/2 would stop the run),
    so z must be given."""
    if z is not None:
        return
    from fl_core.errors import ConfigError

    a, n = config.attack, config.fl.clients_per_round
    if a.schedule == "random-sampling":
        raise ConfigError("attack.params.z", None, "a number when attack.schedule = random-sampling (the attackers "
                          "per round vary, and z from n and f is undefined where they are more than half)")
    f = int(round(a.fraction * n)) if a.schedule == "every-round" else 1
    try:
        derived_z(n, f)
    except ValueError:
        raise ConfigError("attack.params.z", None, f"a number: z from n = {n} updates and f = {f} attackers per "
                          "round (fl.clients_per_round, attack.fraction) is undefined") from None


class ALIEParams(KnowledgeParams):
    z: float | None = Field(
        None,
        description="z, the shift in standard deviations of each coordinate; null derives it from the "
        "round's n updates and f attackers: Φ⁻¹((n − f − s)/(n − f)), s = ⌊n/2 + 1⌋ − f (FLPoison, epfml; "
        "the authors' code defaults to 1.5)",
    )


class ALIE(HonestCraft):
    """Forges μ + z·σ of `known` for every attacker (see the module docstring)."""

    def __init__(self, z: float | None, knowledge):
        self.z = z
        self.knowledge = knowledge

    def forge(self, known, own, ctx, gen):
        z = self.z if self.z is not None else derived_z(ctx.cohort_size, ctx.num_attackers)
        mu, sigma = mean_std(known, ctx.round_idx)
        x = (mu + z * sigma).float()
        return x.expand_as(own).clone(), {"alie_z": z}


def _build(params: ALIEParams, config) -> ALIE:
    check_derived_z(params.z, config)
    return ALIE(params.z, params.knowledge)


register(AttackSpec("alie", "ALIE", _build, ALIEParams, rank=6, goal="untargeted",
                     check=lambda params, config: check_derived_z(params.z, config)))
