"""FLDetector (fl_core/aggregators/fldetector.py): the L-BFGS Hessian-vector product against
the explicit BFGS recursion and a hand-worked 2×2 case, the authors' `lbfgs` and
`detection1` transcribed (zaixizhang/FLDetector `train_mnist.py` @0b22fec) and fed the same
input, the prediction/score/drop step of one round worked by hand, state resume and order
invariance through the round, a tiny end-to-end simulation, config errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fl_core.aggregators.base import AggregatorContext
from fl_core.aggregators.fldetector import (
    FLDetector,
    FLDetectorParams,
    gap_statistic,
    kmeans_high_cluster,
    lbfgs_hvp,
)
from fl_core.config import parse_config
from fl_core.errors import ConfigError
from fl_core.round import apply_round
from fl_core.simulate import Simulation
from fl_core.state import SimulationState, load_state, save_state
from fl_core.types import ClientResult, ClientTask, RoundPlan


def t(rows, dtype=torch.float64):
    return torch.tensor(rows, dtype=dtype)


# ---- the L-BFGS Hessian-vector product ------------------------------------------------

def test_lbfgs_one_pair_worked_by_hand():
    # s = (1, 0), y = (2, 1): σ = y·s / s·s = 2, B0 = 2I.
    # BFGS: B = B0 − B0 s sᵀ B0 / sᵀB0s + y yᵀ / yᵀs
    #         = [[2,0],[0,2]] − [[4,0],[0,0]]/2 + [[4,2],[2,1]]/2 = [[2,1],[1,2.5]]
    # B (1, 1) = (3, 3.5); B (2, −2) = (2, −3). Every step is exact in binary floating point.
    out = lbfgs_hvp(t([[1, 0]]), t([[2, 1]]), t([[1, 1], [2, -2]]))
    assert torch.allclose(out, t([[3, 3.5], [2, -3]]), rtol=0, atol=1e-14)  # a 2×2 solve's rounding


def explicit_bfgs(S: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """The BFGS matrix recursion from B0 = σI, σ from the last pair (what the compact form is)."""
    s_m, y_m = S[-1], Y[-1]
    B = (y_m @ s_m) / (s_m @ s_m) * np.eye(S.shape[1])
    for s, y in zip(S, Y):
        Bs = B @ s
        B = B - np.outer(Bs, Bs) / (s @ Bs) + np.outer(y, y) / (y @ s)
    return B


def spd_pairs(m=4, f=6, seed=0):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(f, f))
    A = A @ A.T + f * np.eye(f)  # SPD: every yᵀs > 0, as BFGS needs
    S = rng.normal(size=(m, f))
    return S, S @ A, rng.normal(size=(3, f))


def test_lbfgs_compact_form_equals_the_explicit_bfgs_recursion():
    S, Y, V = spd_pairs()
    ours = lbfgs_hvp(torch.from_numpy(S), torch.from_numpy(Y), torch.from_numpy(V)).numpy()
    want = V @ explicit_bfgs(S, Y).T
    # entries O(10); two routes through a 8×8 solve / 4 rank-2 updates in float64 with a
    # condition number of a few hundred: agreement to ~1e-12 relative, asserted at 1e-9
    assert np.allclose(ours, want, rtol=1e-9, atol=1e-9)


def authors_lbfgs(S_k_list, Y_k_list, v):
    """zaixizhang/FLDetector train_mnist.py `lbfgs`, nd → numpy (columns [f, 1])."""
    curr_S_k = np.concatenate(S_k_list, axis=1)
    curr_Y_k = np.concatenate(Y_k_list, axis=1)
    S_k_time_Y_k = curr_S_k.T @ curr_Y_k
    S_k_time_S_k = curr_S_k.T @ curr_S_k
    R_k = np.triu(S_k_time_Y_k)
    L_k = S_k_time_Y_k - R_k
    sigma_k = (Y_k_list[-1].T @ S_k_list[-1]) / (S_k_list[-1].T @ S_k_list[-1])
    D_k_diag = np.diag(S_k_time_Y_k)
    upper_mat = np.concatenate([sigma_k * S_k_time_S_k, L_k], axis=1)
    lower_mat = np.concatenate([L_k.T, -np.diag(D_k_diag)], axis=1)
    mat = np.concatenate([upper_mat, lower_mat], axis=0)
    mat_inv = np.linalg.inv(mat)
    approx_prod = sigma_k * v
    p_mat = np.concatenate([curr_S_k.T @ (sigma_k * v), curr_Y_k.T @ v], axis=0)
    approx_prod = approx_prod - np.concatenate([sigma_k * curr_S_k, curr_Y_k], axis=1) @ mat_inv @ p_mat
    return approx_prod


def test_lbfgs_agrees_with_the_authors_transcription():
    S, Y, V = spd_pairs(m=5, f=12, seed=3)
    ours = lbfgs_hvp(torch.from_numpy(S), torch.from_numpy(Y), torch.from_numpy(V)).numpy()
    for j in range(V.shape[0]):
        theirs = authors_lbfgs([s[:, None] for s in S], [y[:, None] for y in Y], V[j][:, None])[:, 0]
        assert np.allclose(ours[j], theirs, rtol=1e-9, atol=1e-9)  # inverse vs solve, float64


# ---- gap statistic and the KMeans split ------------------------------------------------

def authors_detection1(score, rng):
    """zaixizhang/FLDetector train_mnist.py `detection1` → the k it selects; np.random.uniform
    replaced by `rng`, KMeans seeded for repeatability; `select_k` undefined in their loop
    when no gap difference is ≥ 0 (mapped to the largest k)."""
    from sklearn.cluster import KMeans

    nrefs, ks = 10, range(1, 8)
    gaps, gapDiff, sdk = np.zeros(len(ks)), np.zeros(len(ks) - 1), np.zeros(len(ks))
    score = (score - np.min(score)) / (np.max(score) - np.min(score))
    for i, k in enumerate(ks):
        est = KMeans(n_clusters=k, n_init=10, random_state=0).fit(score.reshape(-1, 1))
        Wk = np.sum([np.square(score[m] - est.cluster_centers_[est.labels_[m]]) for m in range(len(score))])
        WkRef = np.zeros(nrefs)
        for j in range(nrefs):
            rand = rng.uniform(0, 1, len(score))
            est = KMeans(n_clusters=k, n_init=10, random_state=0).fit(rand.reshape(-1, 1))
            WkRef[j] = np.sum([np.square(rand[m] - est.cluster_centers_[est.labels_[m]]) for m in range(len(rand))])
        gaps[i] = np.log(np.mean(WkRef)) - np.log(Wk)
        sdk[i] = np.sqrt((1.0 + nrefs) / nrefs) * np.std(np.log(WkRef))
        if i > 0:
            gapDiff[i - 1] = gaps[i - 1] - gaps[i] + sdk[i]
    for i in range(len(gapDiff)):
        if gapDiff[i] >= 0:
            return i + 1
    return ks[-1]


TWO_GROUPS = np.array([1.0, 1.1, 0.9, 1.05, 0.95, 1.02, 0.98, 1.01, 0.97, 1.03, 5.0, 5.2, 4.8, 5.1])
ONE_GROUP = np.random.default_rng(7).normal(1.0, 0.05, size=14)


@pytest.mark.parametrize("scores,attack", [(TWO_GROUPS, True), (ONE_GROUP, False)])
def test_gap_statistic_decision_agrees_with_the_authors(scores, attack):
    ours = gap_statistic(scores, refs=10, max_k=7, seed=11)
    theirs = authors_detection1(scores.copy(), np.random.default_rng(5))
    assert (ours > 1) == (theirs > 1) == attack


def test_gap_statistic_equal_scores_is_one_cluster():
    assert gap_statistic(np.full(6, 0.3), refs=10, max_k=7, seed=0) == 1


def test_kmeans_high_cluster_is_the_high_scores():
    assert kmeans_high_cluster(TWO_GROUPS, seed=0).tolist() == [False] * 10 + [True] * 4


# ---- one round worked by hand ----------------------------------------------------------

def run(agg, rounds):
    state, out = {}, None
    for r, (w, ups) in enumerate(rounds):
        ctx = AggregatorContext(0, r, len(ups), (0, 1, 2, 3), global_params=t(w, torch.float32))
        out = agg.aggregate(t(ups, torch.float32), torch.ones(len(ups), dtype=torch.float64), ctx, state)
        state = out.state
    return out


def test_one_round_prediction_score_and_drop_worked_by_hand():
    # Round 0: w0 = 0, every update (0, 0), aggregate a0 = 0. Round 1: w1 = (1, 0), every
    # update (2, 1) = a1; its end appends the pair s = w1 − w0 = (1, 0), y = a1 − a0 = (2, 1),
    # so B = [[2, 1], [1, 2.5]] (test above). Round 2: w2 = (2, 1); each client was last seen
    # in round 1 on w1, so its prediction is (2, 1) + B (w2 − w1) = (2, 1) + B (1, 1) = (5, 4.5).
    # Updates = prediction + (0, 1), (1, 0), (0, −1), (3, 4): distances 1, 1, 1, 5, Σ = 8,
    # scores n·d/Σd = 0.5, 0.5, 0.5, 2.5. Gap statistic: two distinct values → k = 2;
    # KMeans drops client 3; the aggregate is the mean of the other three = (16/3, 4.5).
    agg = FLDetector(FLDetectorParams(start_round=0), None)
    out = run(agg, [((0, 0), [(0, 0)] * 4), ((1, 0), [(2, 1)] * 4),
                    ((2, 1), [(5, 5.5), (6, 4.5), (5, 3.5), (8, 8.5)])])
    st = out.state
    assert st["score_count"].tolist() == [1, 1, 1, 1]
    assert torch.allclose(st["scores"][:, -1], t([0.5, 0.5, 0.5, 2.5]), rtol=0, atol=1e-12)
    assert out.accepted == (True, True, True, False)
    assert out.metrics["fld_attack"] == 1 and out.metrics["agg_flagged"] == 1
    assert torch.allclose(out.delta, t([16 / 3, 4.5], torch.float32), rtol=0, atol=1e-6)  # float32 mean
    # history bounded: the last N pairs; rounds 1 and 2 each added one
    assert st["S"].shape == (2, 2) and torch.equal(st["S"][0], t([1, 0]))


def test_before_start_round_nothing_is_scored_and_everyone_kept():
    agg = FLDetector(FLDetectorParams(start_round=3), None)
    out = run(agg, [((0, 0), [(0, 0)] * 4), ((1, 0), [(2, 1)] * 4),
                    ((2, 1), [(5, 5.5), (6, 4.5), (5, 3.5), (8, 8.5)])])
    assert out.accepted == (True,) * 4 and out.state["score_count"].tolist() == [0] * 4
    assert out.metrics["fld_scored"] == 0


def test_window_keeps_the_last_n_pairs():
    agg = FLDetector(FLDetectorParams(start_round=0, window=2), None)
    rounds = [((r, 0), [(r, r % 2)] * 4) for r in range(5)]
    assert run(agg, rounds).state["S"].shape == (2, 2)


# ---- through the round: order invariance and resume -------------------------------------

def cfg(cohort=6, **params):
    return parse_config({"fl": {"clients_per_round": cohort},
                         "defense": {"aggregator": "fldetector",
                                     "aggregator_params": {"start_round": 0, "features": "all", **params}}})


def round_results(r, n=6, d=10):
    g = torch.Generator().manual_seed(100 + r)
    res = [ClientResult(k, 0, "attacker" if k == 2 else "benign", 5 + k,
                        torch.randn(d, generator=g) * (8.0 if k == 2 and r == 3 else 1.0)) for k in range(n)]
    return res, RoundPlan(r, tuple(ClientTask(r, x.client_index, 0, x.role, 0) for x in res))


def test_rounds_are_bit_identical_under_any_result_order():
    c = cfg()
    states = {}
    for perm in (None, [5, 4, 3, 2, 1, 0], [2, 0, 5, 1, 3, 4]):
        state = SimulationState(0, torch.zeros(10), "h")
        for r in range(4):
            res, plan = round_results(r)
            res = res if perm is None else [res[i] for i in perm]
            state, stats = apply_round(c, state, plan, res, [])
        states[str(perm)] = (state, stats.as_metrics())
    (a, ma), *rest = states.values()
    assert a.aggregator_state["score_count"].sum() > 0  # scoring really ran
    for b, mb in rest:
        assert torch.equal(a.global_params, b.global_params) and ma == mb
        assert a.aggregator_state.keys() == b.aggregator_state.keys()
        assert all(torch.equal(a.aggregator_state[k], b.aggregator_state[k]) for k in a.aggregator_state)


def test_state_survives_save_and_load_bit_exactly(tmp_path):
    c = cfg()
    state = SimulationState(0, torch.zeros(10), "0" * 64)
    for r in range(2):
        res, plan = round_results(r)
        state, _ = apply_round(c, state, plan, res, [])
    save_state(tmp_path / "s.pt", state)
    loaded = load_state(tmp_path / "s.pt")  # no config: the 10-parameter toy fits no model
    straight, resumed = state, loaded
    for r in range(2, 4):
        res, plan = round_results(r)
        straight, s1 = apply_round(c, straight, plan, res, [])
        resumed, s2 = apply_round(c, resumed, plan, res, [])
    assert torch.equal(straight.global_params, resumed.global_params)
    assert s1.as_metrics() == s2.as_metrics()
    assert all(torch.equal(straight.aggregator_state[k], resumed.aggregator_state[k])
               for k in straight.aggregator_state)
    # the history is really used: losing it changes round 3
    lost = state.replace(aggregator_state={})
    for r in range(2, 4):
        res, plan = round_results(r)
        lost, _ = apply_round(c, lost, plan, res, [])
    assert not torch.equal(lost.aggregator_state["scores"], straight.aggregator_state["scores"])


# ---- end to end and config errors -------------------------------------------------------

RAW = {
    "seed": 5,
    "fl": {"rounds": 3, "clients_per_round": 6, "local_epochs": 1, "batch_size": 5, "eval_every": 3},
    "attack": {"kind": "model-replacement", "fraction": 0.2, "frequency": 1, "num_tasks": 3},
    "defense": {"aggregator": "fldetector", "aggregator_params": {"start_round": 1}},
}


def test_tiny_simulation_runs_and_is_deterministic(tiny_data, tmp_path):
    c = parse_config(RAW)
    runs = []
    for _ in range(2):
        sim = Simulation(c, data=tiny_data)
        hist = sim.run()
        runs.append((sim.state, hist))
    (s1, h1), (s2, h2) = runs
    assert torch.equal(s1.global_params, s2.global_params)
    assert all(torch.equal(s1.aggregator_state[k], s2.aggregator_state[k]) for k in s1.aggregator_state)
    last = h1[-1]
    assert last["agg_selected"] + last["agg_flagged"] == 6 and "fld_k" in last
    assert s1.aggregator_state["S"].shape[0] == 2  # rounds 1 and 2 each added a pair
    save_state(tmp_path / "state.pt", s1)
    loaded = load_state(tmp_path / "state.pt", c)
    assert all(torch.equal(loaded.aggregator_state[k], s1.aggregator_state[k]) for k in s1.aggregator_state)


@pytest.mark.parametrize("params,key", [({"window": 0}, "window"), ({"features": "last"}, "features"),
                                        ({"max_k": 1}, "max_k"), ({"bogus": 1}, "bogus")])
def test_bad_params_are_config_errors(params, key):
    with pytest.raises(ConfigError, match=key):
        parse_config({"defense": {"aggregator": "fldetector", "aggregator_params": params}})


def test_refused_behind_bucketing():
    with pytest.raises(ConfigError):
        parse_config({"defense": {"aggregator": "fldetector", "preaggregation": "bucketing"}})
