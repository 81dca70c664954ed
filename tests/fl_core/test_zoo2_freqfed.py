"""FreqFed (Fereidooni et al. NDSS'24, fl_core/aggregators/freqfed.py): golden cases of each
defining step (the 2-D DCT-II against an explicit DCT matrix, the low-frequency block, the
largest-cluster rule), numpy transcriptions of secretflow's steps (secretflow/secretflow
examples/security/h_bd/agg_freqfed.py @9d72928: tensorDCT, filtering, the cluster choice of
clustering) fed the same inputs, the whole rule on a constructed round, determinism, order
invariance through `apply_round`, one tiny simulation, and config errors.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fl_core.aggregators.base import AggregatorContext
from fl_core.aggregators.freqfed import (
    FreqFed,
    FreqFedParams,
    cluster,
    dct_features,
    largest_cluster,
    layer_slice,
    low_frequency,
)
from fl_core.config import parse_config
from fl_core.errors import ConfigError
from fl_core.models import CNN, NUM_PARAMS
from fl_core.params import get_flat
from fl_core.round import apply_round
from fl_core.simulate import Simulation
from fl_core.state import SimulationState
from fl_core.types import ClientResult, ClientTask, RoundPlan

F64 = torch.float64


# ------------------------------------------------------------------------------ DCT and block
def dct2_matrix(m: int) -> np.ndarray:
    """The orthonormal DCT-II matrix C[k, i] = α_k cos(π(2i + 1)k / 2m), α_0 = √(1/m),
    α_k = √(2/m): V = C_M X C_Nᵀ."""
    k, i = np.meshgrid(np.arange(m), np.arange(m), indexing="ij")
    c = np.cos(np.pi * (2 * i + 1) * k / (2 * m)) * math.sqrt(2 / m)
    c[0] /= math.sqrt(2)
    return c


def test_dct_matches_the_explicit_dct_ii_matrix():
    x = np.random.default_rng(0).integers(-5, 6, size=(6, 8)).astype(np.float64)
    v = dct2_matrix(6) @ x @ dct2_matrix(8).T
    ours = dct_features(x[None])[0]
    # the same block of v: (6 + 8)//4 = 3, a < 3, c < 4, a + c ≤ 3
    block = np.array([v[a, c] for a in range(3) for c in range(4) if a + c <= 3])
    # entries are sums of 48 products of values ≤ 5 by cosines ≤ 1: |v| ≤ 5·48/√48 ≈ 35, and a
    # float64 sum of 48 terms errs by ≤ 48·2.2e-16·240 ≈ 3e-12 absolute; 1e-11 holds
    assert ours.shape == (len(block),) and np.allclose(ours, block, rtol=0, atol=1e-11)
    # the DCT matrix is orthonormal (so 'ortho' it is): C Cᵀ = I
    assert np.allclose(dct2_matrix(6) @ dct2_matrix(6).T, np.eye(6), atol=1e-14)
    # a constant matrix has only the DC coefficient: 1·√(6·8) for all ones
    ones = dct_features(np.ones((1, 6, 8)))[0]
    assert abs(ones[0] - math.sqrt(48)) < 1e-13 and np.abs(ones[1:]).max() < 1e-13


def test_low_frequency_block_by_hand():
    # 4 × 6: a < 2, c < 3, a + c ≤ (4 + 6)//4 = 2 → (0,0) (0,1) (0,2) (1,0) (1,1); not (1,2)
    v = np.arange(24).reshape(4, 6)
    assert low_frequency(v).tolist() == [0, 1, 2, 6, 7]
    # the CNN's fc2 (10 × 128): a < 5, c < 64, a + c ≤ 34 → 35 + 34 + 33 + 32 + 31 = 165
    assert low_frequency(np.zeros((10, 128))).size == 165


def secretflow_features(w: np.ndarray) -> np.ndarray:
    """secretflow agg_freqfed.py (@9d72928) tensorDCT then filtering, transcribed: DCT-II
    'ortho' of each row, then of each column (scipy.fftpack), and the entries V[i][j] with
    i < int(h/2), j < int(w/2), i + j ≤ int((h + w)/4), in loop order."""
    from scipy.fftpack import dct

    rows = np.array([dct(r, type=2, norm="ortho") for r in w])
    v = np.array([dct(c, type=2, norm="ortho") for c in rows.T]).T
    h, wd = v.shape
    return np.array([v[i][j] for i in range(int(h / 2)) for j in range(int(wd / 2)) if i + j <= int((h + wd) / 4)])


def test_features_agree_with_secretflow_transcription():
    g = np.random.default_rng(1)
    for shape in ((10, 128), (7, 9), (32, 9)):
        w = g.normal(size=shape)
        # two float64 FFT paths (fftpack vs fft) on O(1) values: ~1e-15 each, 1e-12 holds
        assert np.allclose(dct_features(w[None])[0], secretflow_features(w), rtol=0, atol=1e-12)


def test_layer_slices_are_the_cnn_weights():
    model = CNN()
    flat = get_flat(model)
    for name, (rows, cols) in {"fc2": (10, 128), "fc1": (128, 9216), "conv2": (64, 288), "conv1": (32, 9)}.items():
        off, m, n = layer_slice(name)
        assert (m, n) == (rows, cols)
        w = getattr(model, name).weight.detach()
        assert torch.equal(flat[off: off + m * n].view(m, n), w.reshape(m, n))


# ------------------------------------------------------------------------------ cluster choice
def secretflow_choice(cluster_ids: np.ndarray) -> set[int]:
    """secretflow clustering step 4-5 (@9d72928), transcribed: the most frequent label of
    np.unique (first on ties), noise −1 included."""
    unique, counts = np.unique(cluster_ids, return_counts=True)
    best = unique[np.argmax(counts)]
    return {i for i in range(len(cluster_ids)) if cluster_ids[i] == best}


def test_largest_cluster_by_hand_and_against_secretflow():
    labels = np.array([1, 1, 0, 0, 0, -1, 2])
    assert largest_cluster(labels) == (False, False, True, True, True, False, False)
    assert secretflow_choice(labels) == {2, 3, 4}  # agreement when noise is not the most frequent
    # noise the most frequent: secretflow keeps the noise points; we keep cluster 0
    noisy = np.array([0, 0, -1, -1, -1, 1])
    assert secretflow_choice(noisy) == {2, 3, 4}
    assert largest_cluster(noisy) == (True, True, False, False, False, False)
    # ties: the cluster holding the lowest row (cluster 1 holds row 0)
    assert largest_cluster(np.array([1, 1, 0, 0, -1])) == (True, True, False, False, False)
    assert largest_cluster(np.array([-1, -1])) is None


def test_cluster_on_cosine_distances():
    # directions (1,0,…) ×3 with small tilts and (0,1,…) ×2: two clusters (min size 2); the
    # norms differ (cosine ignores them)
    f = np.array([[1, .01, 0], [2, 0, .02], [3, .03, .03], [0, 1, .01], [.01, 5, 0]], dtype=np.float64)
    lab = cluster(f, 2, 1)
    assert lab[0] == lab[1] == lab[2] >= 0 and lab[3] == lab[4] >= 0 and lab[0] != lab[3]
    assert (cluster(f[:1], 2, 1) == -1).all()  # too few rows for a cluster


# ------------------------------------------------------------------------------ the whole rule
def scenario(nb=4, na=2):
    """Updates that are zero except on fc2: benign rows A + ½·e_k (a distinct coordinate each),
    attacker rows B + ½·e_k, with A and B small-integer matrices of different shapes; all
    values are multiples of ½, so the mean of 4 benign rows is exact."""
    off, m, n = layer_slice("fc2")
    g = np.random.default_rng(2)
    a = g.integers(1, 4, size=(m, n)).astype(np.float32)
    b = -a[:, ::-1].copy()
    u = torch.zeros(nb + na, NUM_PARAMS)
    for i in range(nb + na):
        w = torch.from_numpy(a if i < nb else b).clone().reshape(-1)
        w[17 * i] += 0.5
        u[i, off: off + m * n] = w
    return u


def run(u, seed=0, weights=None, **params):
    n = u.shape[0]
    w = torch.ones(n, dtype=F64) if weights is None else weights
    return FreqFed(FreqFedParams(**params)).aggregate(u, w, AggregatorContext(seed, 0, n, tuple(range(n))), {})


def test_freqfed_keeps_the_largest_cluster_and_averages_it():
    u = scenario()
    out = run(u)
    assert out.accepted == (True,) * 4 + (False,) * 2
    assert torch.equal(out.delta, u[:4].sum(0) / 4)  # multiples of ½ over 4: exact
    m = out.metrics
    assert m["agg_selected"] == 4 and m["freqfed_clusters"] == 2 and m["freqfed_features"] == 165
    assert m["freqfed_no_cluster"] == 0
    # FedAvg weights among the accepted: (1·u0 + 3·u1 + u2 + u3)/6 in float64, then float32
    w = torch.tensor([1, 3, 1, 1, 9, 9], dtype=F64)
    expect = ((u[0].double() + 3 * u[1].double() + u[2].double() + u[3].double()) / 6).float()
    assert torch.equal(run(u, weights=w).delta, expect)


def test_freqfed_with_no_cluster_accepts_everyone():
    u = scenario(1, 1)  # two rows, min_cluster_size 3 (majority of 2 → 2; here explicit 3)
    out = run(u, min_cluster_size=3)
    assert out.accepted == (True, True) and out.metrics["freqfed_no_cluster"] == 1


def test_freqfed_majority_option():
    # without allow_single_cluster the same min_cluster_size 4 finds nothing: 4 + 2 never
    # splits into two clusters of 4, so every row is noise (and all are accepted)
    assert run(scenario(4, 2), min_cluster_size=4).metrics["freqfed_no_cluster"] == 1
    u = scenario(4, 2)
    out = run(u, min_cluster_size=None)  # ⌊6/2⌋ + 1 = 4: only the benign four can form one
    assert out.accepted == (True,) * 4 + (False,) * 2


def test_freqfed_is_deterministic_and_refuses_a_foreign_layout():
    u = scenario()
    a, b = run(u), run(u)
    assert torch.equal(a.delta, b.delta) and a.metrics == b.metrics
    with pytest.raises(ValueError, match="paper CNN"):
        run(torch.zeros(6, 40))


def test_round_is_bit_identical_under_any_result_order():
    # the registry-wide order test (test_aggregators.ALL) uses d = 40; FreqFed needs the CNN
    u = scenario()
    c = parse_config({"fl": {"clients_per_round": 6}, "defense": {"aggregator": "freqfed"}})
    results = [ClientResult(k, 0, "attacker" if k >= 4 else "benign", 5 + k, u[k]) for k in range(6)]
    plan = RoundPlan(0, tuple(ClientTask(0, r.client_index, 0, r.role, 0) for r in results))
    state = SimulationState(0, torch.zeros(NUM_PARAMS), "h")
    base, stats = apply_round(c, state, plan, results, [])
    for perm in ([5, 4, 3, 2, 1, 0], [2, 0, 5, 1, 3, 4]):
        again, stats2 = apply_round(c, state, plan, [results[i] for i in perm], [])
        assert torch.equal(base.global_params, again.global_params)
        assert stats2.as_metrics() == stats.as_metrics()
    m = stats.as_metrics()
    assert m["flag_tpr"] == 1.0 and m["flag_fpr"] == 0.0


# ------------------------------------------------------------------------------ simulation
RAW = {
    "seed": 5,
    "fl": {"rounds": 2, "clients_per_round": 6, "local_epochs": 1, "batch_size": 5, "eval_every": 2},
    "attack": {"kind": "model-replacement", "fraction": 0.2, "frequency": 1, "num_tasks": 3},
}
DROP = {"round_seconds", "eval_seconds", "aggregate_seconds"}


def config(**params):
    return parse_config({**RAW, "defense": {"aggregator": "freqfed", "aggregator_params": params}})


def test_simulation_runs_freqfed_deterministically(tiny_data):
    runs = []
    for _ in range(2):
        sim = Simulation(config(), data=tiny_data)
        h = sim.run()
        runs.append((sim.state.global_params, [{k: v for k, v in m.items() if k not in DROP} for m in h]))
    (p1, h1), (p2, h2) = runs
    assert torch.equal(p1, p2) and h1 == h2 and bool(torch.isfinite(p1).all())
    last = h1[-1]
    assert last["num_attackers"] >= 1 and last["agg_selected"] + last["agg_flagged"] == 6
    assert 0.0 <= last["flag_tpr"] <= 1.0 and 0.0 <= last["flag_fpr"] <= 1.0
    assert {"freqfed_clusters", "freqfed_noise", "freqfed_no_cluster"} <= last.keys()


# ------------------------------------------------------------------------------ config
def test_config_errors_name_the_key_and_the_allowed_values():
    with pytest.raises(ConfigError, match="layer") as e:
        config(layer="fc3")
    assert "fc2" in str(e.value) and "conv1" in str(e.value)
    with pytest.raises(ConfigError, match="min_cluster_size"):
        config(min_cluster_size=7)  # > fl.clients_per_round = 6
    with pytest.raises(ConfigError, match="min_cluster_size"):
        config(min_cluster_size=1)
    with pytest.raises(ConfigError, match="min_cluster_size"):
        config(min_cluster_size="majority")
    with pytest.raises(ConfigError, match="min_samples"):
        config(min_samples=0)
    p = config().defense.aggregator_params
    assert p == {"layer": "fc2", "min_cluster_size": 2, "min_samples": 1}


def test_labels_name_the_non_default_params():
    from fl_core.aggregators import AGGREGATORS

    def label(name, **p):
        return AGGREGATORS[name].label(AGGREGATORS[name].params(**p))

    assert label("freqfed") == "FreqFed" and label("freqfed", layer="fc1", min_cluster_size=None) == "FreqFed (fc1, mcs=majority)"
    assert label("deepsight") == "DeepSight" and label("deepsight", num_samples=500) == "DeepSight N=500"
