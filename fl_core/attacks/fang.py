"""Fang et al.'s attacks (Fang, Cao, Jia & Gong 2020, "Local model poisoning attacks to
Byzantine-robust federated learning", USENIX Security, §4): the colluding attackers craft
against the aggregation rule they know. Updates here are Δ = w − w_t (update space, as the
re-implementations NDSS21 and FLPoison apply them), not the paper's local models w.

`target: krum` (the paper's attack on Krum; NDSS21 also runs it on Multi-Krum and Bulyan). Every attacker
sends −λ·s, s = sign(μ), μ = mean of the known updates (the paper's w_Re − λs with w_Re the
received global model, 0 in update space). λ starts at an upper bound and is halved until
Krum — this project's own Krum (`fl_core.aggregators.krum.krum_scores`), with the config's
f (or the rule's default f) when the rule is krum/multi-krum/bulyan, else f = c — picks a malicious row among
[a malicious rows; the known rows], or λ ≤ 1e-5; then the attackers send μ − λ·s (nearly μ),
as `get_malicious_updates_fang` of Shejwalkar & Houmansadr's re-implementation
(vrt1shjwlkr/NDSS21-Model-Poisoning, cifar10 notebooks) does. The bound is that code's
`compute_lambda_fang`: with k known rows and c attackers,

    λ₀ = min_i Σ_{l ∈ N_i} ‖Δ_l − Δ_i‖ / ((k − c − 1)·√d) + max_i ‖Δ_i − μ‖ / √d

N_i the k − c − 2 nearest other known rows (plain, not squared, distances). Fang et al.'s
bound has the same shape; by our reading of the paper (its text was not at hand to check)
it counts m − c − 2 neighbours and measures the second term from w_Re, not from μ — it only
moves where the halving starts. Where the code differs we fix two accidents: it drops self
distances by setting every zero distance to 10000 (which also drops exact duplicates; we
skip the diagonal only), and a negative neighbour count slices from the end (we clamp it at
0, and drop the first term when k − c − 1 ≤ 0). All attackers send the same row (NDSS21,
FLPoison; the paper lets the c − 1 others sit close to it). Own-data (the paper's partial
knowledge): the same on the attackers' own updates, with c = max(1, ⌊a²/n⌋), NDSS21's
"unknown benign gradients" estimate of the attackers among a sample of a.

`target: trimmed-mean` (the paper's attack on trimmed mean, and on median: "the same").
s_j = sign(μ_j) estimates the direction the coordinate moves in without attack; each
attacker pushes against it with its own draw (uniform, forge generator, attacker × coordinate):
  full knowledge (omniscient), with max_j/min_j the known updates' extremes and b = 2:
    s_j > 0: in [min_j/b, min_j] if min_j > 0, else [b·min_j, min_j]
    s_j ≤ 0: in [max_j, b·max_j] if max_j > 0, else [max_j, max_j/b]
  partial knowledge (own-data), μ, σ (unbiased) of the attackers' own updates:
    s_j > 0: in [μ_j − 4σ_j, μ_j − 3σ_j];   s_j ≤ 0: in [μ_j + 3σ_j, μ_j + 4σ_j]
(s_j = 0 takes the max side; the paper's s is ±1.) NDSS21's code masks both branches with
`deviation > 0` (`get_malicious_updates_fang_trmean`, `fang_attack_trmean_partial`), so it
sends max + min draws where s > 0 and 0 elsewhere; we follow the paper, not that.

`target: auto` reads `defense.aggregator`: krum, multi-krum, bulyan → krum (Bulyan selects
with Krum first; NDSS21 runs this attack on Multi-Krum and Bulyan alike); every other rule →
trimmed-mean, the coordinate-wise attack that needs no selection rule to aim at (the paper's
for trimmed mean and median; against FedAvg or the newer rules it is our choice, reported as
`forge_fang_krum` = 0). Not an error: the rules × attacks grid runs every attack on every
rule. Set `target` to run the other one.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from fl_core.attacks.base import AttackSpec, HonestCraft, KnowledgeParams, register

if TYPE_CHECKING:
    import torch

    from fl_core.config import SimulationConfig

Target = Literal["auto", "krum", "trimmed-mean"]

#: defense.aggregator → Fang et al.'s Krum attack under `target: auto`; every other rule gets
#: their trimmed-mean attack.
KRUM_RULES = ("krum", "multi-krum", "bulyan")
LAMBDA_THRESHOLD = 1e-5  # Fang et al. / NDSS21: stop halving λ below this


class FangParams(KnowledgeParams):
    target: Target = Field(
        "auto",
        description="the attack: krum (Fang et al.'s attack on Krum), trimmed-mean (their attack on trimmed "
        "mean and median) or auto (from defense.aggregator: krum, multi-krum, bulyan → krum; any other "
        "rule → trimmed-mean)",
    )
    b: float = Field(2.0, gt=1, description="b: full-knowledge trimmed-mean attack draws in [max, b·max] or "
                     "[max/b, max] (min side alike); Fang et al.: 2")


def resolve_target(params: FangParams, config: "SimulationConfig") -> str:
    """krum or trimmed-mean (`auto`: from `defense.aggregator`, see the module docstring)."""
    if params.target != "auto":
        return params.target
    return "krum" if config.defense.aggregator in KRUM_RULES else "trimmed-mean"


def krum_f(config: "SimulationConfig", n: int, c: int) -> int:
    """The f the Krum check assumes on n rows: the server's (config's f, or Krum's default
    ⌊(n − 3)/2⌋, Bulyan's ⌊(n − 3)/4⌋) when the rule is krum/multi-krum/bulyan, else c."""
    from fl_core.aggregators import bulyan, krum

    agg = config.defense.aggregator
    if agg in KRUM_RULES:  # Bulyan's default f is its own, ⌊(n − 3)/4⌋
        resolve_f = bulyan.resolve_f if agg == "bulyan" else krum.resolve_f
        return resolve_f(config.defense.aggregator_params.get("f"), n)
    return c


def lambda_bound(known: "torch.Tensor", c: int, sq_dists: "torch.Tensor | None" = None) -> float:
    """λ₀ (NDSS21 `compute_lambda_fang`, see the module docstring) from known [k, d] float64
    (`sq_dists`: their `pairwise_sq_dists`, if already computed)."""
    import torch

    from fl_core.aggregators.base import pairwise_sq_dists

    k, d = known.shape
    mu = known.mean(dim=0)
    dist = (pairwise_sq_dists(known) if sq_dists is None else sq_dists).sqrt()  # Gram form, float64
    dist.fill_diagonal_(math.inf)
    nn = max(k - c - 2, 0)
    term1 = 0.0
    if k - c - 1 > 0:
        score = dist.sort(dim=1).values[:, :nn].sum(dim=1)
        term1 = float(score.min()) / ((k - c - 1) * math.sqrt(d))
    term2 = float(torch.linalg.vector_norm(known - mu, dim=1).max()) / math.sqrt(d)
    return term1 + term2


def krum_attack(known: "torch.Tensor", a: int, c: int, f: int,
                threshold: float = LAMBDA_THRESHOLD) -> tuple["torch.Tensor", float, bool]:
    """(malicious row [d] float32, λ, whether Krum with f picked it) from known [k, d].

    Krum's choice among [a × (−λs); known] is scored by the project's `nearest_sum` (what
    `krum_scores` applies) on the squared distances of those rows as the server sees them
    (float32): the known–known block once (`pairwise_sq_dists`), the malicious–known ones per
    λ from ‖λ₃₂s + g‖² = λ₃₂²‖s‖² + 2λ₃₂⟨s, g⟩ + ‖g‖² (exact, since s ∈ {−1, 0, 1}ᵈ and the
    float32 row is −λ₃₂s), so each test is O(n²), not O(n²·d)."""
    import torch

    from fl_core.aggregators.base import pairwise_sq_dists
    from fl_core.aggregators.krum import nearest_sum

    x = known.double()
    g = x if known.dtype == torch.float32 else known.float().double()  # the bits the server sees
    d_g = pairwise_sq_dists(g)
    mu = x.mean(dim=0)
    s = torch.sign(mu)
    lam = lambda_bound(x, c, d_g if g is x else None)
    k = x.shape[0]
    n = a + k
    f = max(0, min(f, n - 2))  # Krum's score needs n − f − 2 ≥ 0 neighbours
    d = torch.zeros(n, n, dtype=torch.float64)
    d[a:, a:] = d_g
    g_sq, s_g, s_sq = (g * g).sum(dim=1), g @ s, float(s @ s)
    while lam > threshold:
        lam32 = float(torch.tensor(lam, dtype=torch.float32))
        dm = (lam32 * lam32 * s_sq + 2 * lam32 * s_g + g_sq).clamp_min(0.0)
        d[:a, a:], d[a:, :a] = dm, dm[:, None]
        if int(torch.argmin(nearest_sum(d, n - f - 2))) < a:  # first minimum: ties to a malicious row
            return (-lam * s).float(), lam, True
        lam *= 0.5
    return (mu - lam * s).float(), lam, False


def trimmed_mean_attack(known: "torch.Tensor", a: int, partial: bool, b: float,
                        gen: "torch.Generator") -> "torch.Tensor":
    """[a, d] float32: each attacker's draws in Fang et al.'s intervals (module docstring)."""
    import torch

    x = known.double()
    mu = x.mean(dim=0)
    up = torch.sign(mu) > 0  # the coordinate would increase: push it down (the min side)
    if partial:
        sigma = x.std(dim=0) if x.shape[0] > 1 else torch.zeros_like(mu)
        lo = torch.where(up, mu - 4 * sigma, mu + 3 * sigma)
        hi = torch.where(up, mu - 3 * sigma, mu + 4 * sigma)
    else:
        mx, mn = x.max(dim=0).values, x.min(dim=0).values
        lo = torch.where(up, torch.where(mn > 0, mn / b, mn * b), mx)
        hi = torch.where(up, mn, torch.where(mx > 0, mx * b, mx / b))
    u = torch.rand((a, x.shape[1]), generator=gen, dtype=torch.float64)
    return (lo + u * (hi - lo)).float()


class Fang(HonestCraft):
    """A Forger: attackers train honestly (`HonestCraft`), then craft against `target`."""

    def __init__(self, params: FangParams, target: str):
        self.params, self.target = params, target
        self.knowledge = params.knowledge

    def forge(self, known, own, ctx, gen):
        a = own.shape[0]
        if known.shape[0] == 0:  # no update to estimate from: send the honest ones
            return own.clone(), {}
        partial = ctx.knowledge == "own-data"
        if self.target == "trimmed-mean":
            return trimmed_mean_attack(known, a, partial, self.params.b, gen), {"forge_fang_krum": 0.0}
        c = max(1, a * a // ctx.cohort_size) if partial else a
        mal, lam, picked = krum_attack(known, a, c, krum_f(ctx.config, a + known.shape[0], c))
        return mal.expand(a, -1).clone(), {"forge_fang_krum": 1.0, "forge_lambda": lam,
                                           "forge_krum_picked": float(picked)}


def _build(params: FangParams, config: "SimulationConfig") -> Fang:
    return Fang(params, resolve_target(params, config))


register(AttackSpec("fang", "Fang", _build, FangParams, rank=14, goal="untargeted"))
