"""Golden tests, worked by hand, for every aggregator (fl_core/aggregators/), and their
invariance under the order in which the results arrive.

Most inputs are small integers in R², so the float64 arithmetic inside is exact and the
expected outputs are exact float32 values (`torch.equal`); where a value is not exactly
representable the tolerance is derived next to the assertion.
"""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch

from fl_core.aggregation import ordered_weighted_mean, weighted_mean
from fl_core.aggregators import AGGREGATORS
from fl_core.aggregators.base import AggregatorContext
from fl_core.aggregators.flame import Flame
from fl_core.aggregators.foolsgold import FoolsGold, foolsgold_weights, update_history
from fl_core.aggregators.krum import Krum, krum_scores
from fl_core.aggregators.median import Median
from fl_core.aggregators.multi_krum import MultiKrum
from fl_core.aggregators.rfa import RFA, RFAParams, geometric_median
from fl_core.aggregators.trimmed_mean import TrimmedMean
from fl_core.config import parse_config
from fl_core.build import make_aggregator
from fl_core.rng import Stream, torch_generator
from fl_core.round import apply_round
from fl_core.state import SimulationState
from fl_core.types import ClientResult, ClientTask, RoundPlan

F64 = torch.float64


def t(rows):
    return torch.tensor(rows, dtype=torch.float32)


def ctx(n, round_idx=0, seed=0, clients=None):
    return AggregatorContext(seed, round_idx, n, tuple(range(n)) if clients is None else tuple(clients))


def ones(n):
    return torch.ones(n, dtype=F64)


# Five updates in R²: four around (1, 1) and one far away.
#   a=(0,0) b=(2,0) c=(0,2) d=(1,1) e=(10,10)
# squared distances: ab=4 ac=4 ad=2 bc=8 bd=2 cd=2, ae=200 be=164 ce=164 de=162.
FIVE = t([[0, 0], [2, 0], [0, 2], [1, 1], [10, 10]])


def test_registry_has_every_aggregator():
    assert set(AGGREGATORS) == {"fedavg", "median", "trimmed-mean", "krum", "multi-krum", "rfa",
                                "foolsgold", "flame", "bulyan", "centered-clipping", "signguard", "dnc", "fltrust",
                                "deepsight", "freqfed", "fldetector", "rlr"}


# ------------------------------------------------------------------------------ fedavg
def old_weighted_mean(results, deltas, uniform):
    """fl_core.aggregation.weighted_mean as it was before aggregators (commit cc5fe87),
    kept verbatim as the reference FedAvg must match bit for bit."""
    order = sorted(range(len(results)), key=lambda i: (results[i].client_index, results[i].slot))
    acc = torch.zeros_like(deltas[0], dtype=torch.float64)
    total = 0.0
    for i in order:
        w = 1.0 if uniform else float(results[i].num_examples)
        acc.add_(deltas[i].to(torch.float64), alpha=w)
        total += w
    return (acc / total).to(torch.float32)


@pytest.mark.parametrize("uniform", [False, True])
def test_fedavg_is_bit_identical_to_the_old_mean(uniform):
    g = torch.Generator().manual_seed(5)
    results = [ClientResult(k, 0, "benign", 3 + 7 * k, torch.randn(1000, generator=g)) for k in (4, 0, 3, 1, 2)]
    old = old_weighted_mean(results, [r.delta for r in results], uniform)
    assert torch.equal(weighted_mean(results, [r.delta for r in results], uniform), old)
    c = parse_config({"fl": {"clients_per_round": 5}, "defense": {"weighting": "uniform" if uniform else "weighted"}})
    plan = RoundPlan(0, tuple(ClientTask(0, r.client_index, 0, "benign", 0) for r in results))
    new, _ = apply_round(c, SimulationState(0, torch.zeros(1000), "h"), plan, results, [])
    assert torch.equal(new.global_params, torch.zeros(1000) + 1.0 * old)


# ------------------------------------------------------------------------------ median
def test_median_of_five_and_of_four():
    # x: 0,2,0,1,10 → sorted 0,0,1,2,10 → 1; y likewise → 1
    assert torch.equal(Median().aggregate(FIVE, ones(5), ctx(5), {}).delta, t([1, 1]))
    # without e: x sorted 0,0,1,2 → (0+1)/2; y: 0,0,1,2 → (0+1)/2 (not the lower middle)
    assert torch.equal(Median().aggregate(FIVE[:4], ones(4), ctx(4), {}).delta, t([0.5, 0.5]))


def test_median_ignores_fedavg_weights():
    assert torch.equal(Median().aggregate(FIVE, torch.tensor([1, 1, 1, 1, 100.0], dtype=F64), ctx(5), {}).delta,
                       t([1, 1]))


# ------------------------------------------------------------------------------ trimmed mean
SIX = torch.cat([FIVE, t([[-7, 3]])])


def test_trimmed_mean_by_hand():
    # β = 0.2, n = 6: k = floor(1.2) = 1 per end.
    # x: sorted -7,0,0,1,2,10 → keep 0,0,1,2 → 3/4; y: sorted 0,0,1,2,3,10 → keep 1..3 and 0 → 6/4
    out = TrimmedMean(0.2).aggregate(SIX, ones(6), ctx(6), {})
    assert torch.equal(out.delta, t([0.75, 1.5]))
    assert out.metrics == {"agg_trimmed_per_end": 1}
    # β = 0: nothing trimmed, the plain mean (13-7)/6 = 1 and (13+3)/6 = 16/6
    m = TrimmedMean(0.0).aggregate(SIX, ones(6), ctx(6), {}).delta
    assert torch.equal(m, torch.tensor([1.0, 16 / 6], dtype=F64).to(torch.float32))


# ------------------------------------------------------------------------------ Krum
def test_krum_scores_and_pick():
    # f = 1: each score sums the n - f - 2 = 2 smallest squared distances to others
    # a: 2+4, b: 2+4, c: 2+4, d: 2+2, e: 162+164
    assert krum_scores(FIVE, 1).tolist() == [6.0, 6.0, 6.0, 4.0, 326.0]
    out = Krum(1).aggregate(FIVE, ones(5), ctx(5), {})
    assert torch.equal(out.delta, t([1, 1]))
    assert out.accepted == (False, False, False, True, False)
    assert out.metrics["agg_selected"] == 1 and out.metrics["agg_flagged"] == 4


def test_krum_default_f_and_ties_go_to_the_lower_key():
    # f unset: floor((5-3)/2) = 1, as above. Four equidistant corners of a square plus a far
    # point: the corners tie (score 1+1 with f = 1), the first in key order wins.
    sq = t([[0, 0], [1, 0], [0, 1], [1, 1], [9, 9]])
    out = Krum(None).aggregate(sq, ones(5), ctx(5), {})
    assert out.metrics["krum_f"] == 1 and torch.equal(out.delta, t([0, 0]))


def test_multi_krum_averages_the_m_best_with_fedavg_weights():
    # scores 6,6,6,4,326; m = 3 keeps d and the first two tied ones, a and b.
    # weights a=1, b=2, d=1: (0·1 + 2·2 + 1·1)/4 = 5/4, (0 + 0 + 1)/4 = 1/4
    w = torch.tensor([1, 2, 5, 1, 1], dtype=F64)
    out = MultiKrum(1, 3).aggregate(FIVE, w, ctx(5), {})
    assert torch.equal(out.delta, t([1.25, 0.25]))
    assert out.accepted == (True, True, False, True, False)
    # m unset: n - f = 4 keeps all but e; uniform weights: (0+2+0+1)/4 = 3/4 for x and y
    assert torch.equal(MultiKrum(1, None).aggregate(FIVE, ones(5), ctx(5), {}).delta, t([0.75, 0.75]))


# ------------------------------------------------------------------------------ RFA
LINE = t([[0, 0], [1, 0], [10, 0]])


def test_rfa_one_weiszfeld_step_by_hand():
    # start at the mean (11/3, 0); β_k = 1/|11/3 - x_k| = 3/11, 3/8, 3/19;
    # v1 = (3/8·1 + 3/19·10) / (3/11 + 3/8 + 3/19)
    b = [Fraction(3, 11), Fraction(3, 8), Fraction(3, 19)]
    v1 = (b[1] * 1 + b[2] * 10) / sum(b)
    v, steps, _ = geometric_median(LINE, ones(3), iterations=1, nu=1e-5, tolerance=0.0)
    assert steps == 1 and v[1] == 0.0
    # ~10 float64 operations on values ≤ 11: error ≤ 10 · 2^-53 · 11 ≈ 1.2e-14, far below
    # what we allow (1e-12)
    assert abs(float(v[0]) - float(v1)) <= 1e-12


def test_rfa_reaches_the_geometric_median_fixed_point():
    # On a line the geometric median of 0, 1, 10 (equal weights) is the middle point 1. Near
    # v = 1 + e a Weiszfeld step gives e' ≈ (10/9)·e² (quadratic), and once |e| < ν the
    # smoothed step's fixed point is exactly 1 (Σ β_k (x_k − v) = −δ/ν vanishes at δ = 0).
    # 100 steps leave a float64 error ~1e-15, which rounds to exactly 1.0 in float32.
    out = RFA(RFAParams(iterations=100, nu=1e-5, tolerance=0.0)).aggregate(LINE, ones(3), ctx(3), {})
    assert torch.equal(out.delta, t([1, 0]))
    assert out.metrics["rfa_iterations"] == 100


def test_rfa_uses_the_fedavg_weights():
    # weights 1, 1, 3: point 10 holds more than half the weight, so it is the weighted
    # geometric median. The smoothed fixed point sits at 10 − 2ν/3 (there Σ β(x − v) =
    # −1 − 1 + 3δ/ν = 0); with ν = 1e-12 that is 10 − 7e-13, which is 10.0 in float32 (its
    # spacing at 10 is 9.5e-7). Steps contract the distance by 2/3 (e' ≈ 2e/3), so from
    # e ≈ 6 it takes ~75 steps to get below 1e-12; 200 are plenty.
    w = torch.tensor([1, 1, 3], dtype=F64)
    out = RFA(RFAParams(iterations=200, nu=1e-12, tolerance=0.0)).aggregate(LINE, w, ctx(3), {})
    assert torch.equal(out.delta, t([10, 0]))


def test_rfa_stops_early_on_tolerance():
    # square corners: the mean (1, 1) already is the geometric median; the first step leaves
    # it unchanged, so the objective does not move and a positive tolerance stops at step 1
    sq = t([[0, 0], [2, 0], [0, 2], [2, 2]])
    out = RFA(RFAParams(iterations=50, tolerance=1e-6)).aggregate(sq, ones(4), ctx(4), {})
    assert torch.equal(out.delta, t([1, 1])) and out.metrics["rfa_iterations"] == 1


# ------------------------------------------------------------------------------ FoolsGold
def test_foolsgold_identical_histories_get_zero_weight():
    # cs = 1 off the diagonal: α = 1 − 1 = 0 for all; no weight left, so the zero update
    u = t([[1, 0], [1, 0], [1, 0]])
    out = FoolsGold(1.0, None).aggregate(u, ones(3), ctx(3), {})
    assert torch.equal(out.delta, t([0, 0])) and out.accepted == (False, False, False)
    assert out.metrics["agg_selected"] == 0


def test_foolsgold_orthogonal_histories_are_fedavg():
    # cs = 0: α = 1 for all → rescaled 1 → 0.99 → logit ln(99) + 0.5 = 5.09 → clipped to 1
    u = t([[1, 0, 0], [0, 2, 0], [0, 0, 3]])
    w = torch.tensor([1, 2, 3], dtype=F64)
    out = FoolsGold(1.0, None).aggregate(u, w, ctx(3), {})
    assert torch.equal(foolsgold_weights(u, 1.0), ones(3))
    assert torch.equal(out.delta, ordered_weighted_mean(u, w))


def test_foolsgold_two_sybils_and_one_honest_client():
    # histories e1, e1, 2·e2: the twins have cs = 1 → α = 0; the third α = 1.
    # aggregate = Σ α w Δ / Σ w = 2 · (0, 2) / (1 + 1 + 2) = (0, 1)
    u = t([[1, 0], [1, 0], [0, 2]])
    out = FoolsGold(1.0, None).aggregate(u, torch.tensor([1, 1, 2], dtype=F64), ctx(3), {})
    assert torch.equal(out.delta, t([0, 1])) and out.accepted == (False, False, True)


def test_foolsgold_pardoning_by_hand():
    # a = (1,0), b = (.6,.8), c = (0,1): cos ab = .6, bc = .8, ac = 0; v = max = .6, .8, .8.
    # pardoning (v_a < v_b): cs_ab ← .6 · .6/.8 = .45. α = 1 − max row = .55, .2, .2;
    # ÷ .55 → 1, .364, .364; 1 → .99 → logit 5.09 → 1; ln(.364/.636) + .5 = −.06 → 0.
    # (Without pardoning α_a = .4 and b, c would get ln(1) + .5 = .5.)
    h = t([[1, 0], [0.6, 0.8], [0, 1]])
    assert foolsgold_weights(h, 1.0).tolist() == [1.0, 0.0, 0.0]


def test_foolsgold_weighs_histories_not_this_rounds_update():
    # round 0: clients 3 and 8 send e1 and e2; round 1 both send u = (1, 1). This round's
    # updates are identical (they alone would give α = 0), but the histories (2,1) and
    # (1,2) have cos = 4/5: α = .2 each → ÷ .2 = 1 → .99 → 1: both kept, the mean is u.
    fg = FoolsGold(1.0, None)
    c0 = AggregatorContext(0, 0, 2, (3, 8))
    s1 = fg.aggregate(t([[1, 0], [0, 1]]), ones(2), c0, {}).state
    assert s1["clients"].tolist() == [3, 8] and s1["history"].tolist() == [[1, 0], [0, 1]]
    out = fg.aggregate(t([[1, 1], [1, 1]]), ones(2), AggregatorContext(0, 1, 2, (3, 8)), s1)
    assert out.state["history"].tolist() == [[2, 1], [1, 2]]
    assert torch.equal(out.delta, t([1, 1])) and out.accepted == (True, True)


def test_foolsgold_history_keeps_absent_writers_and_sorts_them():
    s = update_history({}, (5, 2), t([[1, 1], [2, 2]]))
    s = update_history(s, (9, 5), t([[3, 3], [4, 4]]))
    assert s["clients"].tolist() == [2, 5, 9]
    assert s["history"].tolist() == [[2, 2], [5, 5], [3, 3]]


def test_foolsgold_output_layer_is_the_cnn_fc2():
    from fl_core.models import CNN, NUM_PARAMS

    agg = make_aggregator(parse_config({"defense": {"aggregator": "foolsgold"}}))
    assert agg.num_features == 128 * 10 + 10
    assert [p.numel() for p in CNN().parameters()][-2:] == [1280, 10] and NUM_PARAMS > 1290


# ------------------------------------------------------------------------------ FLAME
# four updates along +x with norms 1, 2, 3, 4 and one along +y with norm 5
FLAME_IN = t([[1, 0], [2, 0], [3, 0], [4, 0], [0, 5]])


def test_flame_filters_clips_and_averages_by_hand():
    # cosine distances: 0 among the four, 1 to the fifth; min_cluster_size = 5//2 + 1 = 3:
    # HDBSCAN's one cluster is the four. S = median(1,2,3,4,5) = 3, so (4,0) → (3,0);
    # uniform mean of 1, 2, 3, 3 = 9/4. λ = 0: no noise.
    out = Flame(0.0).aggregate(FLAME_IN, ones(5), ctx(5), {})
    assert torch.equal(out.delta, t([2.25, 0]))
    assert out.accepted == (True, True, True, True, False)
    assert out.metrics["flame_median_norm"] == 3.0 and out.metrics["flame_no_cluster"] == 0


def test_flame_noise_is_lambda_times_median_norm_from_its_stream():
    out = Flame(0.01).aggregate(FLAME_IN, ones(5), ctx(5, round_idx=7, seed=4), {})
    draw = torch.randn(2, generator=torch_generator(4, Stream.AGG_NOISE, 7), dtype=torch.float32)
    # the same float32 operations in the same order: bit-identical
    assert torch.equal(out.delta, t([2.25, 0]) + (0.01 * 3.0) * draw)
    assert out.metrics["flame_noise_std"] == pytest.approx(0.03, rel=1e-15)


def test_flame_small_cohort_admits_everyone():
    out = Flame(0.0).aggregate(t([[1, 0], [0, 3]]), ones(2), ctx(2), {})
    # S = median(1, 3) = 2: (0,3) → (0,2); mean ((1,0) + (0,2)) / 2
    assert torch.equal(out.delta, t([0.5, 1])) and out.metrics["flame_no_cluster"] == 1


# ------------------------------------------------------------------------------ the round
ALL = [("fedavg", {}), ("median", {}), ("trimmed-mean", {"beta": 0.2}), ("krum", {"f": 1}),
       ("multi-krum", {"f": 1, "m": 3}), ("rfa", {}), ("foolsgold", {"features": "all"}),
       ("flame", {"noise_lambda": 0.01}),
       # the zoo (issue 21); FLTrust needs writers beyond data.max_writers (test_zoo_rules.py)
       ("centered-clipping", {"tau": 1.0, "iterations": 2}), ("signguard", {}), ("dnc", {"niters": 3, "b": 10}),
       # the zoo, part 2 (issue 22); DeepSight and FreqFed need the CNN's layout (their own test files)
       ("fldetector", {"start_round": 0}), ("rlr", {"theta": 3})]


def round_inputs(n=6, d=40, seed=3):
    g = torch.Generator().manual_seed(seed)
    results = [ClientResult(k, 0, "attacker" if k == 2 else "benign", 5 + k, torch.randn(d, generator=g))
               for k in range(n)]
    plan = RoundPlan(0, tuple(ClientTask(0, r.client_index, 0, r.role, 0) for r in results))
    return results, plan


@pytest.mark.parametrize("name,params", ALL)
def test_round_is_bit_identical_under_any_result_order(name, params):
    c = parse_config({"fl": {"clients_per_round": 6}, "defense": {"aggregator": name, "aggregator_params": params}})
    results, plan = round_inputs()
    state = SimulationState(0, torch.zeros(40), "h")
    base, stats = apply_round(c, state, plan, results, [])
    for perm in ([5, 4, 3, 2, 1, 0], [2, 0, 5, 1, 3, 4]):
        again, stats2 = apply_round(c, state, plan, [results[i] for i in perm], [])
        assert torch.equal(base.global_params, again.global_params)
        assert stats2.as_metrics() == stats.as_metrics()
        assert base.aggregator_state.keys() == again.aggregator_state.keys()
        assert all(torch.equal(base.aggregator_state[k], again.aggregator_state[k]) for k in base.aggregator_state)


def test_round_scores_the_flags_against_the_roles():
    # Krum f = 1 on FIVE: only d (client 3) is selected. Attackers: b and e (clients 1, 4),
    # both flagged → TPR 2/2; benign a, c, d: a and c flagged → FPR 2/3.
    c = parse_config({"fl": {"clients_per_round": 5}, "defense": {"aggregator": "krum", "aggregator_params": {"f": 1}}})
    roles = ["benign", "attacker", "benign", "benign", "attacker"]
    results = [ClientResult(k, 0, roles[k], 10, FIVE[k]) for k in range(5)]
    plan = RoundPlan(0, tuple(ClientTask(0, k, 0, roles[k], 0) for k in range(5)))
    new, stats = apply_round(c, SimulationState(0, torch.zeros(2), "h"), plan, results, [])
    m = stats.as_metrics()
    assert m["flag_tpr"] == 1.0 and m["flag_fpr"] == pytest.approx(2 / 3, rel=1e-15)
    assert m["agg_selected"] == 1 and m["agg_flagged"] == 4
    assert torch.equal(new.global_params, t([1, 1]))


def test_round_merges_clipping_and_noise_metrics():
    # clipping M = 2: a=(0,0) b=(2,0) c=(0,2) d=(1,1) e=(10,10) have norms 0, 2, 2, √2,
    # 14.1; only e exceeds 2 → clip_fraction 1/5.
    # noise σ = 0.5 on the sum of 5 → 0.1 on the mean.
    from fl_core.build import make_defenses

    c = parse_config({"fl": {"clients_per_round": 5},
                      "defense": {"norm_bound": 2.0, "noise_sigma": 0.5, "aggregator": "median"}})
    results = [ClientResult(k, 0, "benign", 10, FIVE[k]) for k in range(5)]
    plan = RoundPlan(0, tuple(ClientTask(0, k, 0, "benign", 0) for k in range(5)))
    _, stats = apply_round(c, SimulationState(0, torch.zeros(2), "h"), plan, results, make_defenses(c))
    m = stats.as_metrics()
    assert m["clip_fraction"] == pytest.approx(0.2, rel=1e-15)
    assert m["noise_std_on_mean"] == pytest.approx(0.1, rel=1e-15)
    assert "flag_tpr" not in m  # the median selects no one


def test_no_flag_rates_for_fedavg_and_none_without_attackers():
    c = parse_config({"fl": {"clients_per_round": 5}})
    results, plan = round_inputs(5)
    _, stats = apply_round(c, SimulationState(0, torch.zeros(40), "h"), plan, results, [])
    assert "flag_tpr" not in stats.as_metrics() and "agg_selected" not in stats.as_metrics()
    c = parse_config({"fl": {"clients_per_round": 5}, "defense": {"aggregator": "krum"}})
    benign = [ClientResult(r.client_index, 0, "benign", 5, r.delta) for r in results]
    _, stats = apply_round(c, SimulationState(0, torch.zeros(40), "h"), plan, benign, [])
    assert stats.as_metrics()["flag_tpr"] is None and stats.as_metrics()["flag_fpr"] == 4 / 5


def test_every_aggregator_has_a_label_and_builds_from_defaults():
    for name, spec in AGGREGATORS.items():
        assert isinstance(spec.label(spec.params()), str) and spec.label(spec.params())
        # FLTrust's root set comes from writers beyond data.max_writers (the embedded source has 439)
        make_aggregator(parse_config({"data": {"max_writers": 400}, "defense": {"aggregator": name}}))
