"""DeepSight (Rieger et al. NDSS'22, fl_core/aggregators/deepsight.py): golden cases of each
defining step (NEUPs and threshold exceedings, the classification boundary, DDifs on a tiny
model, the cluster-distance matrix, the cluster acceptance rule, clipping to the median),
numpy transcriptions of FLPoison's steps (vio1etus/FLPoison aggregators/deepsight.py
@eb74fb2) fed the same inputs, the whole rule on a constructed round, its seeded noise,
determinism, order invariance through `apply_round`, one tiny simulation, and config errors.

Inputs are small integers or sixteenths so float64 is exact where `==`/`torch.equal` is used;
elsewhere the tolerance is derived next to the assertion.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fl_core.aggregators.base import AggregatorContext
from fl_core.aggregators.deepsight import (
    DeepSight,
    DeepSightParams,
    accept_clusters,
    clip_mean,
    cluster_dists,
    ddifs,
    ensemble_labels,
    neups_and_tes,
    noise_inputs,
    output_layer,
    suspicious_labels,
)
from fl_core.config import parse_config
from fl_core.errors import ConfigError
from fl_core.models import CNN, NUM_PARAMS
from fl_core.params import get_flat
from fl_core.rng import Stream, torch_generator
from fl_core.round import apply_round
from fl_core.simulate import Simulation
from fl_core.state import SimulationState
from fl_core.types import ClientResult, ClientTask, RoundPlan

F64 = torch.float64


# ------------------------------------------------------------------------------ NEUPs and TEs
# P = 5 output neurons, H = 2. UP_p = |b_p| + Σ_h |W_ph|:
#   row 0: W = [[1,2],[1,1],[0,1],[1,0],[0,0]], b = [0,0,0,0,-1] → UP = (3,2,1,1,1), energies
#          (9,4,1,1,1), Σ 16 → NEUP = (9,4,1,1,1)/16 (exact). ξ = max(0.01, 1/5) = 0.2:
#          threshold 0.2·9/16 = 0.1125; 9/16 and 4/16 exceed, 1/16 does not → TE = 2.
#   row 1: UP = (1,1,1,1,0)·2 → energies (4,4,4,4,0), Σ 16 → NEUP (.25,.25,.25,.25,0); threshold
#          0.05 → TE = 4.
#   row 2: all zero → NEUP 0, TE 0 (our choice for 0/0).
W3 = torch.tensor([[[1, 2], [1, 1], [0, 1], [1, 0], [0, 0]],
                   [[1, 1], [-2, 0], [0, 2], [1, 1], [0, 0]],
                   [[0, 0]] * 5], dtype=F64)
B3 = torch.tensor([[0, 0, 0, 0, -1], [0, 0, 0, 0, 0], [0] * 5], dtype=F64)


def test_neups_and_threshold_exceedings_by_hand():
    neup, te = neups_and_tes(W3, B3, 0.01)
    assert torch.equal(neup, torch.tensor([[9, 4, 1, 1, 1], [4, 4, 4, 4, 0], [0] * 5], dtype=F64) / 16)
    assert te.tolist() == [2, 4, 0]
    # ξ = max(0.5, 1/5) = 0.5: row 0's threshold 9/32 > 4/16 → only the largest exceeds
    assert neups_and_tes(W3, B3, 0.5)[1].tolist() == [1, 4, 0]


def flpoison_neups_tes(w: np.ndarray, b: np.ndarray, threshold_factor: float, num_classes: int):
    """FLPoison aggregators/deepsight.py get_NEUPs_TEs (@eb74fb2), transcribed: per client,
    update_energy = |bias| + Σ|weight| over axis 1, NEUP = energy²/Σ energy², threshold =
    max(threshold_factor, 1/num_classes)·max NEUP, TE = Σ(NEUP > threshold)."""
    tes, neups = np.empty(len(w)), np.empty((len(w), num_classes))
    factor = max(threshold_factor, 1 / num_classes)
    for cid in range(len(w)):
        energy = np.abs(b[cid]) + np.sum(np.abs(w[cid]), axis=1)
        sq = energy ** 2
        neup = sq / np.sum(sq)
        tes[cid] = np.sum(neup > factor * np.max(neup))
        neups[cid] = neup
    return neups, tes


def test_neups_and_tes_agree_with_flpoison_transcription():
    g = np.random.default_rng(0)
    w = g.normal(size=(7, 10, 128)) * g.uniform(0.1, 3, size=(7, 10, 1))  # per-class scales
    b = g.normal(size=(7, 10))
    ours_neup, ours_te = neups_and_tes(torch.from_numpy(w), torch.from_numpy(b), 0.01)
    ref_neup, ref_te = flpoison_neups_tes(w, b, 0.01, 10)
    # the same float64 formula, summed in another order: ~1e-16 relative per value
    assert np.allclose(ours_neup.numpy(), ref_neup, rtol=1e-13, atol=0)
    assert ours_te.tolist() == ref_te.astype(int).tolist()
    assert len(set(ours_te.tolist())) > 1  # the inputs really exercise the threshold


def test_output_layer_is_the_cnn_fc2_tail():
    model = CNN()
    flat = get_flat(model)[None, :]
    w, b = output_layer(flat)
    assert torch.equal(w[0], model.fc2.weight.detach().to(F64)) and torch.equal(b[0], model.fc2.bias.detach().to(F64))


# ------------------------------------------------------------------------------ classification boundary
def test_suspicious_is_te_at_most_half_the_median():
    # sorted 3, 6, 6, 7, 8: median 6, boundary 3 → TE 3 is suspicious (≤), 4 would not be
    assert suspicious_labels(torch.tensor([6, 3, 8, 6, 7])) == (False, True, False, False, False)
    # even count: median of 2, 4, 8, 8 = 6, boundary 3 → only TE 2
    assert suspicious_labels(torch.tensor([8, 4, 2, 8])) == (False, False, True, False)


# ------------------------------------------------------------------------------ DDifs
class Tiny(nn.Module):
    """logits = x·Wᵀ + b with 2 inputs and 2 classes."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 2)

    def forward(self, x):
        return self.fc(x.reshape(len(x), -1))


# Global model 0 → softmax (1/2, 1/2) everywhere. Local update: W = [[1,0],[0,0]], b = 0, so
# logits (x₁, 0) and softmax (e^x₁, 1)/(e^x₁ + 1). Noise x₁ ∈ {0, ln 3}: softmax (1/2, 1/2)
# and (3/4, 1/4); ratios to 1/2: (1, 1) and (3/2, 1/2); mean (5/4, 3/4).
def test_ddif_ratio_on_a_tiny_model_by_hand():
    upd = torch.tensor([[1.0, 0, 0, 0, 0, 0]])  # (W row-major, then b)
    x = torch.tensor([[0.0, 5.0], [float(np.log(3.0)), -2.0]])  # x₂ has weight 0
    out = ddifs(Tiny(), torch.zeros(6), upd, [x, x[:1]])
    # float32 log_softmax and exp: a few float32 ulps (≤ 4 · 6e-8) per ratio; the mean is float64
    assert out.shape == (2, 1, 2)
    assert np.allclose(out[0, 0], [1.25, 0.75], rtol=3e-7, atol=0)
    assert np.allclose(out[1, 0], [1.0, 1.0], rtol=3e-7, atol=0)


def flpoison_ddif(out_client: np.ndarray, out_global: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """FLPoison get_DDifs (@eb74fb2), one client and one seed, transcribed: Σ over the noise of
    output_client / (output_global + ε), divided by num_samples. FLPoison feeds the model's raw
    outputs; the paper (and we) the softmax probabilities, so it is fed those here."""
    return np.sum(out_client / (out_global + eps), axis=0) / len(out_client)


def test_ddif_agrees_with_flpoison_transcription_on_probabilities():
    torch.manual_seed(3)
    model = Tiny()
    glob = get_flat(model)
    upd = torch.randn(3, 6) * 0.5
    x = torch.rand(50, 2)
    ours = ddifs(model, glob, upd, [x])[0]
    with torch.no_grad():
        model.fc.weight.copy_(glob[:4].view(2, 2)); model.fc.bias.copy_(glob[4:])
        pg = torch.softmax(model(x), 1).double().numpy()
        for i in range(3):
            local = glob + upd[i]
            model.fc.weight.copy_(local[:4].view(2, 2)); model.fc.bias.copy_(local[4:])
            ref = flpoison_ddif(torch.softmax(model(x), 1).double().numpy(), pg)
            # ε = 1e-6 on probabilities ≥ ~0.1 shifts each ratio by ≤ 1e-5 relative; float32
            # softmax/exp a few ulps: rtol 2e-5 covers both
            assert np.allclose(ours[i], ref, rtol=2e-5, atol=0)


def test_noise_is_uniform_from_the_rounds_named_stream():
    ctx = AggregatorContext(7, 3, 2, (0, 1))
    x = noise_inputs(ctx, 1, 5)
    expect = torch.rand(5, 1, 28, 28, generator=torch_generator(7, Stream.AGG_NOISE, 3, 1, 1))
    assert torch.equal(x, expect) and float(x.min()) >= 0 and float(x.max()) < 1
    assert not torch.equal(x, noise_inputs(ctx, 0, 5))  # each seed its own set
    assert not torch.equal(x, noise_inputs(AggregatorContext(7, 4, 2, (0, 1)), 1, 5))  # and round


# ------------------------------------------------------------------------------ clustering
def test_cluster_dists_keep_noise_points_apart():
    d = cluster_dists(np.array([0, 0, -1, -1, 1]))
    assert d.tolist() == [[0, 0, 1, 1, 1], [0, 0, 1, 1, 1], [1, 1, 0, 1, 1], [1, 1, 1, 0, 1], [1, 1, 1, 1, 0]]


def flpoison_accept(labels: np.ndarray, suspicious: np.ndarray, tau: float) -> list[int]:
    """FLPoison aggregate step 4 (@eb74fb2), transcribed: for each non-noise cluster, accept
    its members when Σ suspicious < τ·|cluster|; noise points are never accepted."""
    accepted = []
    n_clusters = len(set(labels)) - (1 if -1 in labels else 0)
    for i in range(n_clusters):
        idx = np.where(labels == i)[0]
        if np.sum(suspicious[idx]) < tau * len(idx):
            accepted.extend(idx)
    return sorted(int(i) for i in accepted)


def test_cluster_acceptance_by_hand():
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2, -1, -1])
    sus = (True, False, False, True, False, False, False, False, False, True, False)
    # cluster 0: 1 of 3 suspicious, 1 < (1/3)·3 = 1 is false → rejected (exactly τ rejects);
    # cluster 1: 1 of 4, 1 < 4/3 → accepted; cluster 2: 0 of 2 → accepted;
    # noise: each its own cluster, accepted iff not suspicious
    assert accept_clusters(labels, sus, 1 / 3) == (False,) * 3 + (True,) * 6 + (False, True)
    # FLPoison agrees on every clustered row; it rejects all noise (we accept a clean one)
    ref = flpoison_accept(labels, np.array(sus), 1 / 3)
    assert ref == [3, 4, 5, 6, 7, 8]


def test_ensemble_clustering_of_two_clear_groups():
    # two tight groups of 4 in every feature: each clustering finds them, and so the final one
    g = np.random.default_rng(1)
    grp = np.array([0] * 4 + [1] * 4)
    neups = np.where(grp[:, None] == 0, [0.5, 0.5, 0], [0, 0, 1]) + g.normal(0, 1e-3, (8, 3))
    dd = np.stack([np.where(grp[:, None] == 0, [1.0, 1.0], [2.0, 0.1]) + g.normal(0, 1e-3, (8, 2))] * 3)
    cos = np.where(grp[:, None] == grp[None, :], 0.01, 1.0) + g.uniform(0, 1e-3, (8, 8))
    cos = (cos + cos.T) / 2
    np.fill_diagonal(cos, 0)
    labels, counts = ensemble_labels(cos, neups, dd, 3, None)
    assert len(set(labels[:4])) == 1 and len(set(labels[4:])) == 1 and labels[0] != labels[4] and min(labels) >= 0
    assert counts["deepsight_clusters"] == counts["deepsight_cos_clusters"] == counts["deepsight_neup_clusters"] == 2


# ------------------------------------------------------------------------------ clipping and average
def test_clip_to_the_median_norm_of_all_updates_by_hand():
    # norms 5, 10, 1, 20 → median (5 + 10)/2 = 7.5. Accepted: rows 0, 1, 2 (row 3 rejected but
    # its norm counts). Row 1 (6,8) is scaled by 7.5/10 to (4.5, 6). Weights 1, 2, 1:
    # ((3,4) + 2·(4.5,6) + (1,0)) / 4 = (13/4, 16/4) = (3.25, 4)
    u = torch.tensor([[3.0, 4], [6, 8], [1, 0], [0, 20]])
    delta, s = clip_mean(u, torch.tensor([1.0, 2, 1, 1], dtype=F64), (True, True, True, False))
    assert s == 7.5 and torch.equal(delta, torch.tensor([3.25, 4.0]))
    zero, _ = clip_mean(u, torch.ones(4, dtype=F64), (False,) * 4)
    assert torch.equal(zero, torch.zeros(2))  # nothing accepted: the model is kept


# ------------------------------------------------------------------------------ the whole rule
def scenario(nb=8, na=4, seed=0):
    """w_t (a seeded CNN) and nb benign updates around one direction, na backdoor-like ones
    around another whose output-layer update moves only class 7 (TE = 1: suspicious)."""
    g = torch_generator(seed, Stream.DATA, 99)
    torch.manual_seed(seed)
    w = get_flat(CNN())
    base, bd = torch.randn(NUM_PARAMS, generator=g) * 1e-3, torch.randn(NUM_PARAMS, generator=g) * 1e-3
    rows = []
    for i in range(nb + na):
        u = (base if i < nb else bd) + torch.randn(NUM_PARAMS, generator=g) * 3e-4
        if i >= nb:
            out_w, out_b = torch.zeros(10, 128), torch.zeros(10)
            out_w[7], out_b[7] = 0.05 * torch.rand(128, generator=g), 0.05
            u[-1290:] = torch.cat([out_w.reshape(-1), out_b])
        rows.append(u)
    return w, torch.stack(rows)


def run(u, w, seed=0, round_idx=0, **params):
    n = u.shape[0]
    ctx = AggregatorContext(seed, round_idx, n, tuple(range(n)), global_params=w)
    p = DeepSightParams(**{"num_samples": 32, "min_cluster_size": 3, **params})
    return DeepSight(p, 1).aggregate(u, torch.ones(n, dtype=F64), ctx, {})


def test_deepsight_rejects_the_suspicious_group_and_clips_the_rest():
    w, u = scenario()
    out = run(u, w)
    assert out.accepted == (True,) * 8 + (False,) * 4
    m = out.metrics
    assert m["deepsight_suspicious"] == 4 and m["agg_selected"] == 8 and m["deepsight_clusters"] == 2
    expect, s = clip_mean(u, torch.ones(12, dtype=F64), out.accepted)
    assert torch.equal(out.delta, expect) and m["deepsight_median_norm"] == s


def test_deepsight_is_deterministic_and_seeded():
    w, u = scenario()
    a, b = run(u, w, seed=4), run(u, w, seed=4)
    assert torch.equal(a.delta, b.delta) and a.metrics == b.metrics and a.accepted == b.accepted


def test_deepsight_refuses_a_foreign_layout_and_missing_global_weights():
    agg = DeepSight(DeepSightParams(), 1)
    with pytest.raises(ValueError, match="global_params"):
        agg.aggregate(torch.zeros(6, NUM_PARAMS), torch.ones(6, dtype=F64), AggregatorContext(0, 0, 6, tuple(range(6))), {})
    with pytest.raises(ValueError, match="paper CNN"):
        agg.aggregate(torch.zeros(6, 40), torch.ones(6, dtype=F64),
                      AggregatorContext(0, 0, 6, tuple(range(6)), global_params=torch.zeros(40)), {})


PARAMS = {"num_samples": 16, "num_seeds": 2, "min_cluster_size": 3}


def test_round_is_bit_identical_under_any_result_order():
    # the registry-wide order test (test_aggregators.ALL) uses d = 40; DeepSight needs the CNN
    w, u = scenario(4, 2)
    c = parse_config({"fl": {"clients_per_round": 6}, "defense": {"aggregator": "deepsight", "aggregator_params": PARAMS}})
    results = [ClientResult(k, 0, "attacker" if k >= 4 else "benign", 5 + k, u[k]) for k in range(6)]
    plan = RoundPlan(0, tuple(ClientTask(0, r.client_index, 0, r.role, 0) for r in results))
    state = SimulationState(0, w, "h")
    base, stats = apply_round(c, state, plan, results, [])
    for perm in ([5, 4, 3, 2, 1, 0], [2, 0, 5, 1, 3, 4]):
        again, stats2 = apply_round(c, state, plan, [results[i] for i in perm], [])
        assert torch.equal(base.global_params, again.global_params)
        assert stats2.as_metrics() == stats.as_metrics()
    m = stats.as_metrics()
    assert m["flag_tpr"] == 1.0 and m["flag_fpr"] == 0.0  # the two attackers (TE 1) are flagged


# ------------------------------------------------------------------------------ simulation
RAW = {
    "seed": 5,
    "fl": {"rounds": 2, "clients_per_round": 6, "local_epochs": 1, "batch_size": 5, "eval_every": 2},
    "attack": {"kind": "model-replacement", "fraction": 0.2, "frequency": 1, "num_tasks": 3},
}
DROP = {"round_seconds", "eval_seconds", "aggregate_seconds"}


def config(**params):
    return parse_config({**RAW, "defense": {"aggregator": "deepsight", "aggregator_params": params}})


def test_simulation_runs_deepsight_and_reports_flags(tiny_data):
    sim = Simulation(config(**PARAMS), data=tiny_data)
    history = sim.run()
    last = history[-1]
    assert bool(torch.isfinite(sim.state.global_params).all())
    assert last["num_attackers"] >= 1 and last["agg_selected"] + last["agg_flagged"] == 6
    assert 0.0 <= last["flag_tpr"] <= 1.0 and 0.0 <= last["flag_fpr"] <= 1.0
    assert {"deepsight_suspicious", "deepsight_clusters", "deepsight_median_norm"} <= last.keys()


@pytest.mark.slow  # two more 2-round simulations
def test_simulation_is_deterministic(tiny_data):
    runs = []
    for _ in range(2):
        sim = Simulation(config(**PARAMS), data=tiny_data)
        h = sim.run()
        runs.append((sim.state.global_params, [{k: v for k, v in m.items() if k not in DROP} for m in h]))
    assert torch.equal(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1]


# ------------------------------------------------------------------------------ config
def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="min_cluster_size"):
        config(min_cluster_size=7)  # > fl.clients_per_round = 6
    with pytest.raises(ConfigError, match="min_samples"):
        config(min_samples=9)
    with pytest.raises(ConfigError, match="num_samples"):
        config(num_samples=0)
    with pytest.raises(ConfigError, match="tau"):
        config(tau=0)
    with pytest.raises(ConfigError, match="num_seed"):  # unknown key: did-you-mean num_seeds
        config(num_seed=3)
    p = config().defense.aggregator_params
    assert p["num_samples"] == 20_000 and p["num_seeds"] == 3 and p["tau"] == 1 / 3 and p["threshold_factor"] == 0.01


def test_ddif_of_an_extreme_update_stays_finite():
    # a confident global model, logits (−1000·x₁, 0), and a local one flipped to (1000·x₁, 0):
    # at x₁ = 1, log p_local − log p_global = 0 − (−1000) = 1000 for class 0 (e^1000 overflows
    # float64), capped at 700; class 1: e^(−1000) underflows to 0
    glob = torch.tensor([-1000.0, 0, 0, 0, 0, 0])
    upd = torch.tensor([[2000.0, 0, 0, 0, 0, 0]])
    out = ddifs(Tiny(), glob, upd, [torch.tensor([[1.0, 0.0]])])
    assert np.isfinite(out).all() and out[0, 0, 1] == 0.0
    assert out[0, 0, 0] == pytest.approx(np.exp(700.0), rel=1e-15)  # torch vs numpy exp: an ulp at most
