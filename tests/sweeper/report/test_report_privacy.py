"""The DP accounting of weak DP: the noise multiplier for both noise placements (worked by
hand), dp-accounting against an independent closed form, monotonicity, and the
population size K the sampling rate q = C·K/K uses."""

from __future__ import annotations

import math

import pytest
from scipy.optimize import brentq
from scipy.stats import norm

from sweeper.report.privacy import (
    TFF_DIGITS_WRITERS,
    account,
    epsilon_pld,
    epsilon_rdp,
    noise_multiplier,
    plain_words,
    population_size,
)


def test_noise_multiplier_by_hand():
    # paper: M = 5, σ = 0.025 on the SUM of 30 clipped updates: z = σ / M = 0.005
    assert noise_multiplier(0.025, 5.0, 30, "sum") == pytest.approx(0.005)
    # σ on the MEAN: the mean's sensitivity is M / (C·K) = 5/30, so z = 0.025·30/5 = 0.15
    assert noise_multiplier(0.025, 5.0, 30, "mean") == pytest.approx(0.15)
    # σ = 1 on the sum with M = 1 is the textbook z = 1
    assert noise_multiplier(1.0, 1.0, 100, "sum") == 1.0
    with pytest.raises(ValueError):
        noise_multiplier(0.1, 1.0, 30, "per-client")
    with pytest.raises(ValueError):
        noise_multiplier(0.1, 0.0, 30, "sum")


def exact_gaussian_epsilon(z: float, rounds: int, delta: float) -> float:
    """Independent closed form (Balle & Wang 2018): T Gaussian mechanisms with noise
    multiplier z compose to one with μ = √T / z, whose tight privacy profile is
    δ(ε) = Φ(μ/2 − ε/μ) − e^ε Φ(−μ/2 − ε/μ); solve δ(ε) = delta for ε."""
    mu = math.sqrt(rounds) / z

    def gap(eps):
        return norm.cdf(mu / 2 - eps / mu) - math.exp(eps) * norm.cdf(-mu / 2 - eps / mu) - delta

    return brentq(gap, 0.0, 100.0)


@pytest.mark.parametrize("z,rounds", [(2.0, 10), (1.0, 1), (4.0, 50)])
def test_accountants_match_the_exact_gaussian_without_sampling(z, rounds):
    # q = 1 (every writer every round): no amplification, so the exact value is known
    delta = 1e-5
    exact = exact_gaussian_epsilon(z, rounds, delta)
    pld = epsilon_pld(z, 1.0, rounds, delta)
    rdp, order = epsilon_rdp(z, 1.0, rounds, delta)
    # the PLD accountant discretizes the privacy loss at 1e-4 (pessimistically) per composed
    # round and truncates tails: for ≤ 50 rounds its ε is above the exact one by ≤ 50·1e-4
    # plus the truncation; 1% (or 0.01 absolute) bounds both with room
    assert pld == pytest.approx(exact, rel=0.01, abs=0.01)
    # RDP is a valid upper bound, looser than exact but not by much for a pure Gaussian
    assert exact - 1e-6 <= rdp <= 1.5 * exact + 0.05
    assert order > 1


def test_more_noise_less_epsilon_more_rounds_more_epsilon():
    q, d = 30 / 3383, 1e-5
    e = {z: epsilon_rdp(z, q, 300, d)[0] for z in (0.5, 1.0, 2.0)}
    assert e[0.5] > e[1.0] > e[2.0] > 0
    r = [epsilon_rdp(1.0, q, t, d)[0] for t in (10, 100, 300)]
    assert r[0] < r[1] < r[2]
    # sampling amplifies privacy: a larger q costs more ε
    assert epsilon_rdp(1.0, 0.01, 100, d)[0] < epsilon_rdp(1.0, 0.1, 100, d)[0]
    p = [epsilon_pld(z, q, 100, d) for z in (0.7, 1.0)]
    assert p[0] > p[1]


def test_paper_setting_gives_no_meaningful_privacy():
    cfg = {"defense.noise_sigma": 0.025, "defense.norm_bound": 5.0, "fl.clients_per_round": 30,
           "defense.noise_placement": "sum", "data.source": "synthetic", "data.num_writers": 3383}
    res = account("M=5, σ=0.025", cfg, rounds=300, delta=1e-5)
    assert res.noise_multiplier == pytest.approx(0.005)
    assert res.sampling_rate == pytest.approx(30 / 3383)
    assert res.population == 3383 and res.rounds == 300
    assert res.epsilon_pld is not None and res.epsilon_pld <= res.epsilon_rdp
    assert res.epsilon > 1000 and res.verdict.startswith("none in practice")
    # the same σ on the mean is 30× more noise (z = 0.15): still no real guarantee
    mean = account("x", {**cfg, "defense.noise_placement": "mean"}, rounds=300, delta=1e-5)
    assert mean.noise_multiplier == pytest.approx(0.15)
    assert 10 < mean.epsilon < res.epsilon
    # no noise, nothing to account
    assert account("x", {**cfg, "defense.noise_sigma": 0.0}, rounds=300) is None


def test_population_size_sources(shared_digits):
    assert population_size({"data.source": "synthetic", "data.num_writers": 50})[0] == 50
    assert population_size({"data.source": "embedded"})[0] == 439
    k, how = population_size({"data.source": "embedded", "data.max_writers": 40})
    assert k == 40 and "max_writers" in how
    assert population_size({"data.source": "tff-h5", "data.path": str(shared_digits)})[0] == 439
    k, how = population_size({"data.source": "tff-h5", "data.path": "/nonexistent"})
    assert k == TFF_DIGITS_WRITERS and "assumed" in how


def test_plain_words_bins():
    assert plain_words(0.5, 1e-5).startswith("strong")
    assert plain_words(5.0, 1e-5).startswith("moderate")
    assert plain_words(50.0, 1e-5).startswith("weak")
    assert plain_words(5000.0, 1e-5).startswith("none in practice")
    assert "infinite" in plain_words(float("inf"), 1e-5)
