"""Min-Max and Min-Sum (Shejwalkar & Houmansadr 2021, "Manipulating the Byzantine: optimizing
model poisoning attacks and defenses for federated learning", NDSS, §IV "AGR-agnostic attacks").

The colluding attackers of a round all send the same update

    m = μ − γ·p,    μ = mean of the updates they know,

where p is the perturbation (`perturbation`: the paper's "inverse" unit vector μ/‖μ‖, sign
sign(μ), or standard deviation std(∇), which `m = μ − γ·p` turns into −unit, −sign, −std), and
γ is the largest scale that keeps m inside the known updates' cloud:

    min-max:  max_i ‖m − ∇_i‖² ≤ max_{i,j} ‖∇_i − ∇_j‖²
    min-sum:  Σ_i ‖m − ∇_i‖² ≤ min_i Σ_j ‖∇_i − ∇_j‖²

(the paper's; FLPoison's Min-Sum compares with the LARGEST benign sum, a looser bound.) Both
hold at γ = 0 (μ is in the convex hull, and minimises the sum of squared distances), and
each side is convex in γ, so the feasible γ ≥ 0 form one interval [0, γ*].

γ is found by the authors' search, followed line by line from their notebooks
(vrt1shjwlkr/NDSS21-Model-Poisoning, cifar10/release-fedsgd-alexnet-*.ipynb, `our_attack_dist`
= Min-Max, `our_attack_score` = Min-Sum): γ = γ_init = 10, step = γ_init; while
|γ_succ − γ| > τ (τ = 1e-5): if the constraint holds, γ_succ = γ and γ += step/2, else
γ −= step/2; then step /= 2. The result is γ_succ (0 if no γ tried held). It is a bisection
on [0, 2·γ_init]: on exit the lowest failure above γ_succ is at most 2τ away, so
γ_succ ≤ γ* < γ_succ + 2τ (when γ* < 2·γ_init). The stop test is the code's, on the next
candidate's distance from the last success, not on the step size (the two differ by the
factor 2 above); the paper's Algorithm 1 has this loop, which we could not check against its
text here.

Defaults from the authors' code: perturbation `std` (every Min-Max / Min-Sum run cell of their
notebooks sets `dev_type = 'std'`; the functions' own default is `unit_vec`), std with
Bessel's correction (torch.std), γ_init = 10, τ = 1e-5. Knowledge: `omniscient` uses the
round's benign updates (the paper's main setting); `own-data` the attackers' own honest
updates (their "unknown benign gradients" notebooks). Float64 throughout; the squared
distances are computed from differences (not the Gram matrix), as the authors'.

Degenerate rounds: with one known update the std is 0 (torch would give NaN) and with no
known update there is nothing to move from: the attackers then send μ (or their own
updates), γ = 0.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Literal

from pydantic import Field

from fl_core.attacks.base import AttackSpec, HonestCraft, KnowledgeParams, register

if TYPE_CHECKING:
    import torch

Perturbation = Literal["std", "unit-vec", "sign"]


class MinMaxParams(KnowledgeParams):
    perturbation: Perturbation = Field(
        "std",
        description="p in m = μ − γ·p: std (per-coordinate standard deviation of the known updates, "
        "the authors' runs), unit-vec (μ/‖μ‖) or sign (sign(μ)) — the paper's inverse std / unit "
        "vector / sign",
    )
    gamma_init: float = Field(10.0, gt=0, description="γ_init: the search's first γ; it explores [0, 2·γ_init] "
                              "(authors' code: 10)")
    tau: float = Field(1e-5, gt=0, description="τ: the search stops when the next γ is within τ of the last "
                       "feasible one (authors' code: 1e-5)")


def perturbation_vector(known: "torch.Tensor", mu: "torch.Tensor", kind: str) -> "torch.Tensor":
    """p [d] float64 (`known` [k, d] float64, k ≥ 1)."""
    import torch

    if kind == "unit-vec":
        norm = torch.linalg.vector_norm(mu)
        return mu / norm if float(norm) > 0 else torch.zeros_like(mu)
    if kind == "sign":
        return torch.sign(mu)
    if known.shape[0] < 2:  # one sample has no spread (torch.std: NaN)
        return torch.zeros_like(mu)
    return known.std(dim=0)  # unbiased, as the authors' torch.std


def gamma_search(feasible: Callable[[float], bool], gamma_init: float = 10.0, tau: float = 1e-5) -> float:
    """The authors' γ search (`our_attack_dist` / `our_attack_score`): the largest γ found
    feasible; 0.0 if none was."""
    gamma, step, succ = gamma_init, gamma_init, 0.0
    while abs(succ - gamma) > tau:
        if feasible(gamma):
            succ = gamma
            gamma = gamma + step / 2
        else:
            gamma = gamma - step / 2
        step = step / 2
    return succ


def min_max_forge(known: "torch.Tensor", kind: str, rule: str, gamma_init: float = 10.0,
                  tau: float = 1e-5) -> tuple["torch.Tensor", float]:
    """(m [d] float64, γ) for `rule` "min-max" or "min-sum" from the known updates [k ≥ 1, d].

    Each test of the search is O(k), not O(k·d): with r_i = μ − ∇_i,
    ‖m − ∇_i‖² = ‖r_i‖² − 2γ⟨r_i, p⟩ + γ²‖p‖², its three terms computed once (float64)."""
    from fl_core.aggregators.base import pairwise_sq_dists

    x = known.double()
    mu = x.mean(dim=0)
    p = perturbation_vector(x, mu, kind)
    if not bool(p.ne(0).any()):
        return mu, 0.0
    r = mu - x
    r_sq, r_p, p_sq = (r * r).sum(dim=1), r @ p, float(p @ p)
    del r
    d2 = pairwise_sq_dists(x)  # the Gram form, float64: one matmul

    def dists(g: float) -> "torch.Tensor":
        return r_sq - 2 * g * r_p + g * g * p_sq

    if rule == "min-max":
        bound = float(d2.max())

        def feasible(g: float) -> bool:
            return float(dists(g).max()) <= bound
    else:
        bound = float(d2.sum(dim=1).min())

        def feasible(g: float) -> bool:
            return float(dists(g).sum()) <= bound

    gamma = gamma_search(feasible, gamma_init, tau)
    return mu - gamma * p, gamma


class MinMax(HonestCraft):
    """A Forger: attackers train honestly (`HonestCraft`), then all send m."""

    def __init__(self, rule: str, params: MinMaxParams):
        self.rule, self.params = rule, params
        self.knowledge = params.knowledge

    def forge(self, known, own, ctx, gen):
        if known.shape[0] == 0:  # nobody to hide among: send the honest updates
            return own.clone(), {"forge_gamma": 0.0}
        p = self.params
        m, gamma = min_max_forge(known, p.perturbation, self.rule, p.gamma_init, p.tau)
        return m.to(own.dtype).expand_as(own).clone(), {"forge_gamma": gamma}


register(AttackSpec("min-max", "Min-Max", lambda params, config: MinMax("min-max", params), MinMaxParams, rank=12,
                    goal="untargeted"))
register(AttackSpec("min-sum", "Min-Sum", lambda params, config: MinMax("min-sum", params), MinMaxParams, rank=13,
                    goal="untargeted"))
