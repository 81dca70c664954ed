"""Golden tests, worked by hand, for every formula of the paper (NOTES.md)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fl_core.aggregation import weighted_mean
from fl_core.attacks.pgd import project_l2
from fl_core.config import parse_config
from fl_core.defenses.base import AggregateContext
from fl_core.defenses.norm_clipping import NormClipping, clip_l2
from fl_core.defenses.weak_dp import GaussianNoise, noise_std_on_mean
from fl_core.round import apply_round
from fl_core.sampling import Population, boost_factor
from fl_core.state import SimulationState
from fl_core.types import ClientResult, ClientTask, RoundPlan


U32 = 2.0**-24  # float32 unit roundoff: each float32 operation is off by at most this, relatively


def res(k, n, delta, role="benign"):
    return ClientResult(k, 0, role, n, torch.tensor(delta, dtype=torch.float32))


def test_weighted_mean_of_two_updates_by_hand():
    # n = 1 and 3: (1·[1,2,3] + 3·[5,6,7]) / 4 = [16/4, 20/4, 24/4] = [4, 5, 6]
    r = [res(0, 1, [1, 2, 3]), res(1, 3, [5, 6, 7])]
    assert torch.equal(weighted_mean(r, [x.delta for x in r], uniform=False), torch.tensor([4.0, 5.0, 6.0]))
    # unweighted: ([1,2,3] + [5,6,7]) / 2 = [3, 4, 5]
    assert torch.equal(weighted_mean(r, [x.delta for x in r], uniform=True), torch.tensor([3.0, 4.0, 5.0]))


@settings(max_examples=30, deadline=None)
@given(st.permutations(list(range(6))), st.integers(0, 2**31 - 1))
def test_aggregate_is_bit_identical_under_permutation(perm, seed):
    g = torch.Generator().manual_seed(seed)
    results = [ClientResult(k, 0, "benign", k + 1, torch.randn(50, generator=g)) for k in range(6)]
    base = weighted_mean(results, [r.delta for r in results], uniform=False)
    shuffled = [results[i] for i in perm]
    assert torch.equal(base, weighted_mean(shuffled, [r.delta for r in shuffled], uniform=False))


def cfg(**kw):
    raw = {"fl": {"clients_per_round": 3, "server_lr": kw.pop("eta", 1.0)},
           "attack": {"kind": "model-replacement", "fraction": 0.1}}
    raw.update(kw)
    return parse_config(raw)


def test_boost_one_attacker_weighted_uses_eta():
    # cohort n = 10, 20, 30 (Σ = 60), attacker n = 10: β = Σn / (η n_a) = 60/(η·10)
    pop = Population(3, (10, 20, 30), (0,))
    cohort = np.array([0, 1, 2])
    assert boost_factor(cfg(), pop, cohort, [0]) == [6.0]
    assert boost_factor(cfg(eta=2.0), pop, cohort, [0]) == [3.0]


def test_boost_several_attackers_split_evenly():
    # m = 2 attackers (n = 10 and 20): β_a = 60/(η·2·n_a) = 3 and 1.5, so n_a β_a = 30 each,
    # together Σn/η = 60: their weighted contribution adds up to one full replacement.
    pop = Population(3, (10, 20, 30), (0, 1))
    betas = boost_factor(cfg(), pop, np.array([0, 1, 2]), [0, 1])
    assert betas == [3.0, 1.5]
    assert 10 * betas[0] + 20 * betas[1] == 60.0


def test_boost_uniform_weighting_when_defense_on():
    # clipping on → unweighted mean (reference code): β = |S| / (η m) = 3 / (2·1) and 3/(1·2)
    pop = Population(3, (10, 20, 30), (0, 1))
    c = cfg(eta=2.0, defense={"norm_bound": 5.0})
    assert c.uniform_weighting
    assert boost_factor(c, pop, np.array([0, 1, 2]), [0]) == [1.5]
    assert boost_factor(cfg(defense={"norm_bound": 5.0}), pop, np.array([0, 1, 2]), [0, 1]) == [1.5, 1.5]


@pytest.mark.parametrize("eta,uniform", [(1.0, False), (0.5, False), (2.0, True)])
def test_boosted_replacement_lands_on_w_star(eta, uniform):
    """Benign updates zero, attacker sends β(w*−w_t): w_{t+1} = w_t + η·mean = w* exactly."""
    extra = {"defense": {"norm_bound": 1e9, "weighting": "uniform"}} if uniform else {}
    c = cfg(eta=eta, **extra)
    pop = Population(3, (4, 4, 8), (2,))
    w_t = torch.tensor([1.0, -2.0, 0.5])
    w_star = torch.tensor([3.0, 0.0, -1.5])
    beta = boost_factor(c, pop, np.array([0, 1, 2]), [2])[0]
    results = [res(0, 4, [0, 0, 0]), res(1, 4, [0, 0, 0]), ClientResult(2, 0, "attacker", 8, beta * (w_star - w_t))]
    plan = RoundPlan(0, tuple(ClientTask(0, r.client_index, 0, r.role, 0) for r in results))
    from fl_core.build import make_defenses

    new, stats = apply_round(c, SimulationState(0, w_t, "h"), plan, results, make_defenses(c))
    # float32: β·(w*−w_t), the weighted mean over 3 clients and w_t + η·mean take ≤ 8
    # roundings, each ≤ u relative to the largest intermediate, β·|w*−w_t|
    atol = 8 * U32 * float((beta * (w_star - w_t)).abs().max())
    assert torch.allclose(new.global_params, w_star, rtol=0, atol=atol)
    assert new.round_idx == 1 and stats.num_attackers == 1


def test_fedavg_round_with_server_lr_by_hand():
    """w = [1, 1]; updates [2, 0] (n=1) and [0, 4] (n=3); mean = [0.5, 3]; η = 0.5 → [1.25, 2.5]."""
    c = parse_config({"fl": {"server_lr": 0.5, "clients_per_round": 2}})
    results = [res(0, 1, [2, 0]), res(1, 3, [0, 4])]
    plan = RoundPlan(0, tuple(ClientTask(0, k, 0, "benign", 0) for k in (0, 1)))
    new, stats = apply_round(c, SimulationState(0, torch.tensor([1.0, 1.0]), "h"), plan, results, [])
    assert torch.equal(new.global_params, torch.tensor([1.25, 2.5]))
    assert stats.aggregate_norm == pytest.approx(math.hypot(0.5, 3.0))
    assert stats.benign_norms == (2.0, 4.0)


def test_clip_norm5_vector_at_bound_1():
    clipped, norm = clip_l2(torch.tensor([3.0, 4.0]), 1.0)
    # 3/5 in float32: squares, sum, sqrt, divide, scale: ≤ 5 roundings, plus the literal's 1
    assert norm == 5.0 and torch.allclose(clipped, torch.tensor([0.6, 0.8]), rtol=6 * U32, atol=0)
    zero, n0 = clip_l2(torch.zeros(4), 1.0)
    assert n0 == 0.0 and torch.equal(zero, torch.zeros(4))
    inside, _ = clip_l2(torch.tensor([0.3, 0.4]), 1.0)
    assert torch.equal(inside, torch.tensor([0.3, 0.4]))


def test_clipping_is_global_not_per_layer():
    # two "layers" [3,4] and [0,0,12]: global norm 13 → scale 1/13 for both halves
    d = torch.tensor([3.0, 4.0, 0.0, 0.0, 12.0])
    out, m = NormClipping(1.0).on_client(d)
    # norm of 5 values (5 squares, 4 additions, sqrt) and one scaling, against one division
    assert torch.allclose(out, d / 13.0, rtol=12 * U32, atol=0)
    assert m == {"clip_fraction": 1.0}


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=20), st.floats(1e-3, 1e3))
def test_clipped_norm_at_most_bound_and_idempotent(values, bound):
    v = torch.tensor(values, dtype=torch.float32)
    # clipping in float32 computes a norm of n terms (≤ n + 1 roundings: Higham's γ_n, plus
    # the sqrt) and a scaling (≤ 2): the clipped norm exceeds the bound by ≤ (n + 3)·u
    tol = (len(values) + 3) * U32
    once, _ = clip_l2(v, bound)
    assert float(torch.linalg.vector_norm(once.double())) <= bound * (1 + tol)
    twice, _ = clip_l2(once, bound)
    assert torch.allclose(once, twice, rtol=tol, atol=0)


def test_pgd_projection_inside_unchanged_outside_on_sphere():
    inside = torch.tensor([0.1, 0.1])
    assert torch.equal(project_l2(inside, 1.0), inside)
    out = project_l2(torch.tensor([6.0, 8.0]), 2.0)  # norm 10 → radius 2: [1.2, 1.6]
    # as for clipping: ≤ 5 roundings, plus the literal's 1; the norm re-measured adds 4
    assert torch.allclose(out, torch.tensor([1.2, 1.6]), rtol=6 * U32, atol=0)
    assert float(torch.linalg.vector_norm(out)) == pytest.approx(2.0, rel=10 * U32, abs=0)


def test_noise_std_conversion_by_hand():
    # σ = 0.025 on the sum of C·K = 30 clipped updates → 0.025/30 on the mean
    assert noise_std_on_mean(0.025, "sum", 30) == pytest.approx(0.025 / 30)
    assert noise_std_on_mean(0.025, "mean", 30) == 0.025


@pytest.mark.parametrize("placement,expected", [("sum", 0.5 / 10), ("mean", 0.5)])
def test_noise_placement_statistical_std(placement, expected):
    """2^20 coordinates: the sample std is within 0.5% of the target (seed 3; the standard
    error of a sample std is σ/√(2n) ≈ 0.07% here, so 0.5% is > 7 standard errors)."""
    d = 2**20
    mean = torch.zeros(d)
    out, m = GaussianNoise(0.5, placement).on_aggregate(mean, AggregateContext(3, 7, 10))
    assert m["noise_std_on_mean"] == pytest.approx(expected)
    assert float(out.double().std()) == pytest.approx(expected, rel=5e-3)
    assert abs(float(out.double().mean())) < 5 * expected / math.sqrt(d)


def test_noise_is_seeded_by_round_and_added_once():
    noise = GaussianNoise(1.0, "mean")
    a, _ = noise.on_aggregate(torch.zeros(5), AggregateContext(1, 4, 3))
    b, _ = noise.on_aggregate(torch.zeros(5), AggregateContext(1, 4, 3))
    c, _ = noise.on_aggregate(torch.zeros(5), AggregateContext(1, 5, 3))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # clipping hook adds nothing: the noise lives only on the aggregate
    d, _ = noise.on_client(torch.ones(5))
    assert torch.equal(d, torch.ones(5))


def test_weak_dp_round_adds_noise_once_to_the_mean():
    """Two clients, σ on the sum: w_{t+1} − w_t − mean(clip(Δ)) is one N(0,(σ/2)²) draw,
    identical to the DP_NOISE stream's draw for that round."""
    c = parse_config({"seed": 9, "fl": {"clients_per_round": 2},
                      "defense": {"norm_bound": 1.0, "noise_sigma": 0.2}})
    from fl_core.build import make_defenses

    results = [res(0, 1, [3.0, 4.0, 0.0]), res(1, 5, [0.0, 0.0, 0.5])]
    plan = RoundPlan(4, tuple(ClientTask(4, k, 0, "benign", 0) for k in (0, 1)))
    new, _ = apply_round(c, SimulationState(4, torch.zeros(3), "h"), plan, results, make_defenses(c))
    clipped_mean = (torch.tensor([0.6, 0.8, 0.0]) + torch.tensor([0.0, 0.0, 0.5])) / 2  # uniform
    expected_noise = GaussianNoise(0.2, "sum").draw(torch.Size([3]), AggregateContext(9, 4, 2)) * 0.1
    # float32: clip (norm of 3, scale), uniform mean of 2, noise scaling and the addition
    # take ≤ 12 roundings, each ≤ u of the largest magnitude involved
    scale = float((clipped_mean.abs() + expected_noise.abs()).max())
    assert torch.allclose(new.global_params, clipped_mean + expected_noise, rtol=0, atol=12 * U32 * scale)
