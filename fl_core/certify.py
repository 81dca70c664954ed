"""CRFL's certification (Xie et al., ICML 2021, Theorem 1 and §4.2): the smoothed model votes
over N_m noisy copies w + N(0, σ_T² I) of the global model; for each test input the top class
A and the runner-up B give p_A, p_B; with probability ≥ 1 − α the prediction cannot be changed
by a backdoor of magnitude up to the radius

    RAD = sqrt( −ln(1 − (√p_A − √p_B)²) · σ² /
                (2 R τ² L_z² Σ_i w_i² γ² η² (q_B/n_B)² · Π_{t=t_adv+1}^{T−1}(2Φ(ρ_t/σ) − 1) · (2Φ(ρ_T/σ_T) − 1)) ),

L_z = √(2 + 2ρ_adv + ρ_adv²), w_i = 1/N the R attackers' aggregation weights.

Followed from the authors' code, AI-secure/CRFL commit 549eb53: `smooth_mnist.py`
(`certificate_over_model`, `probability_estimation`: N_m reloads of the model plus per-parameter
noise, majority vote, p_B the runner-up's share, ties to the lowest class) and
`certify_mnist.py` (`certify`, `cal_prob_bound`): N_m = 1000, α = 0.001, σ_T = 0.01
(`configs/mnist_smooth_params.yaml`); the bound on p_A, p_B is theirs, Hoeffding's
√(ln(1/α)/(2N_m)) with p_A ≥ 1e-8, p_B ≤ 1 − 1e-8 (not Clopper–Pearson). Their factor
2Φ(x) − 1 (scipy's `norm.cdf`) is computed as erf(x/√2), the same function: scipy is not a
dependency of the package (the tests compare the two).
Where we differ, and why:
- An input whose lower p_A does not exceed its upper p_B is not certified (radius −1, counted
  at no radius). Their `cal_prob_bound` squares √p_A − √p_B whatever its sign, so such an
  input gets a positive radius; the theorem needs p_A > p_B.
- Their `pa == 1.0 → 100000` short-cut applies only to the un-bounded estimate; with the
  Hoeffding bound p_A < 1 always, so it never fires here.
- ρ_t is the training schedule with its cap (their certification omits the cap, which their
  MNIST runs of 100 rounds never reach).
- The threat-model constants R, γ, q_B/n_B, τ, ρ_adv are the certificate's assumptions, config
  keys with the authors' MNIST values; η = `fl.client_lr`, N = `fl.clients_per_round`,
  R = the attackers of an attack round (1 under `attack.schedule: fixed-frequency`, else
  round(ε·C·K), at least 1; 1 without an attack), t_adv = `attack.start_round` + 1 (the first
  attack round counted from 1; 0 without an attack: the product then runs over every round).
- Certified backdoor figure: the share of the backdoor inputs (D_mal) whose SMOOTHED
  prediction is the target label (`smoothed_backdoor_acc`); the authors' poisoned-input
  certified accuracy needs the inputs' true labels, which the evaluator does not hold. An
  attack that learns its trigger (A3FL, IBA) has D_mal stamped with the trigger in force,
  as `backdoor_acc` has (`Evaluator.backdoor_inputs`).

Randomness: copy m of the certification after round T uses `Stream.CRFL` keyed (T, 1, m)
(the training noise uses (round, 0)); nothing is stateful, so a resumed run certifies alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from fl_core.rng import Stream, torch_generator

#: the authors' clamps on the bounded probabilities (certify_mnist.py `certify`)
P_FLOOR = 1e-8


@dataclass(frozen=True)
class ThreatModel:
    """The theorem's constants (module docstring); `rho(t)` the training schedule."""

    sigma_train: float
    sigma_test: float
    lr: float
    local_iters: float
    attackers: int
    clients: int
    gamma: float
    poison_share: float
    t_adv: int
    rho_adv: float
    rho: Callable[[int], float]


def two_phi_minus_one(x: float) -> float:
    """2Φ(x) − 1 = erf(x/√2), Φ the standard normal CDF."""
    return math.erf(x / math.sqrt(2))


def hoeffding(p_a_exp: np.ndarray, p_b_exp: np.ndarray, n_models: int, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """The authors' bounds: p_A − √(ln(1/α)/(2N_m)) (≥ 1e-8), p_B + the same (≤ 1 − 1e-8)."""
    h = math.sqrt(math.log(1 / alpha) / 2 / n_models)
    return np.maximum(P_FLOOR, p_a_exp - h), np.minimum(1 - P_FLOOR, p_b_exp + h)


def certified_radius(p_a: float, p_b: float, T: int, tm: ThreatModel) -> float:
    """RAD of the module docstring after T rounds (1-based); −1 when p_A ≤ p_B (abstain)."""
    if not p_a > p_b:
        return -1.0
    fraction = -math.log(1 - (math.sqrt(p_a) - math.sqrt(p_b)) ** 2) * tm.sigma_train ** 2
    l_z = math.sqrt(2 + 2 * tm.rho_adv + tm.rho_adv ** 2)
    weights_sq = tm.attackers * (1 / tm.clients) ** 2
    denominator = (2 * tm.attackers * tm.local_iters ** 2 * l_z ** 2 * weights_sq * tm.gamma ** 2 * tm.lr ** 2
                   * tm.poison_share ** 2)
    contract = 1.0
    for t in range(tm.t_adv + 1, T):
        contract *= two_phi_minus_one(tm.rho(t) / tm.sigma_train)
    contract *= two_phi_minus_one(tm.rho(T) / tm.sigma_test)
    return math.sqrt(fraction / (denominator * contract))


def vote_probabilities(votes: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """votes [N_m, n] predicted classes → (class A, p_A, p_B) per input (authors'
    `probability_estimation`: argmax of the counts, ties to the lowest class; B the runner-up)."""
    counts = np.stack([np.bincount(col, minlength=num_classes) for col in votes.T]) if votes.size else np.zeros((0, num_classes), np.int64)
    top = counts.argmax(1)
    rows = np.arange(len(counts))
    p_a = counts[rows, top] / votes.shape[0]
    rest = counts.copy()
    rest[rows, top] = 0
    p_b = rest.max(1) / votes.shape[0]
    return top, p_a, p_b


def smoothed_votes(predict: Callable, params, inputs: Sequence, n_models: int, sigma: float, seed: int,
                   round_num: int) -> list[np.ndarray]:
    """Each input set's [N_m, n] predictions of the copies params + σ_T·N(0, I), copy m drawn
    from Stream.CRFL (round_num, 1, m). `predict(params, x)` → predicted classes."""
    import torch

    out = [[] for _ in inputs]
    for m in range(n_models):
        g = torch_generator(seed, Stream.CRFL, round_num, 1, m)
        noisy = params + sigma * torch.randn(params.shape, generator=g, dtype=torch.float32)
        for i, x in enumerate(inputs):
            out[i].append(np.asarray(predict(noisy, x)))
    return [np.stack(v) if v else np.zeros((0, 0), np.int64) for v in out]


def radius_key(r: float) -> str:
    return f"certified_acc_r{r:g}"


def certified_accuracy(radii: np.ndarray, is_acc: np.ndarray, at: Sequence[float]) -> dict[str, float]:
    """certified_acc_r<r>: the share of inputs predicted right with radius ≥ r (authors'
    `CertifiedAcc.at_radius`)."""
    n = max(len(radii), 1)
    return {radius_key(r): float(np.logical_and(radii >= r, is_acc).sum()) / n for r in at}


def threat_model(config) -> ThreatModel:
    from fl_core.defenses.crfl import rho_t

    d, fl, a = config.defense, config.fl, config.attack
    attacked = a.kind != "none"
    return ThreatModel(
        sigma_train=d.crfl_sigma,
        sigma_test=d.crfl_certify_sigma if d.crfl_certify_sigma is not None else d.crfl_sigma,
        lr=fl.client_lr, local_iters=d.crfl_certify_local_iters,
        attackers=max(1, round(a.fraction * fl.clients_per_round)) if attacked and a.schedule != "fixed-frequency" else 1,
        clients=fl.clients_per_round, gamma=d.crfl_certify_gamma, poison_share=d.crfl_certify_poison_share,
        t_adv=a.start_round + 1 if attacked else 0, rho_adv=d.crfl_certify_rho_adv,
        rho=lambda t: rho_t(t, d.crfl_rho_slope, d.crfl_rho_offset, d.crfl_rho_max),
    )


def certify_due(config, rounds_done: int) -> bool:
    """CRFL on, and the final round or (with `defense.crfl_certify_every`) a multiple of it."""
    d = config.defense
    if d.crfl_sigma is None:
        return False
    every = d.crfl_certify_every
    return rounds_done == config.fl.rounds or (every is not None and rounds_done % every == 0)


def certify(config, evaluator, params, rounds_done: int, num_classes: int = 10,
            attack_state: dict | None = None) -> dict[str, float]:
    """The certification metrics of the global model `params` after `rounds_done` rounds, on the
    evaluator's main-task test set and backdoor inputs (module docstring); `attack_state` is
    the learned trigger in force (A3FL, IBA), which stamps the backdoor inputs as it does
    for `backdoor_acc`."""
    import torch

    from fl_core.params import set_flat
    from fl_core.training import torch_threads

    d = config.defense
    tm = threat_model(config)

    @torch.no_grad()
    def predict(p, x):
        set_flat(evaluator.model, p.to(evaluator.device))
        evaluator.model.eval()
        return evaluator._predict(x)[0].cpu().numpy()

    with torch_threads(evaluator.threads):
        mal_x = evaluator.backdoor_inputs(attack_state)
    inputs = [evaluator.test_x] + ([mal_x] if len(mal_x) else [])
    with torch_threads(evaluator.threads):
        votes = smoothed_votes(predict, params.to("cpu", torch.float32), inputs, d.crfl_certify_models,
                               tm.sigma_test, config.seed, rounds_done)
    top, pa_exp, pb_exp = vote_probabilities(votes[0], num_classes)
    pa, pb = hoeffding(pa_exp, pb_exp, d.crfl_certify_models, d.crfl_certify_alpha)
    radii = np.array([certified_radius(float(x), float(y), rounds_done, tm) for x, y in zip(pa, pb)])
    is_acc = top == evaluator.test_y.cpu().numpy()
    out = {"smoothed_acc": float(is_acc.mean()) if len(is_acc) else 0.0}
    out.update(certified_accuracy(radii, is_acc, d.crfl_certify_radii))
    if len(votes) > 1:
        top_b, _, _ = vote_probabilities(votes[1], num_classes)
        out["smoothed_backdoor_acc"] = float((top_b == evaluator.target).mean())
    return out
