"""CRFL (Xie et al. ICML'21): the global-model clip + noise of a round, the ρ_t schedule, the
certified radius (by hand and against the authors' formula transcribed below), the smoothed
vote, resume, an end-to-end run, and config errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fl_core.certify import (
    ThreatModel,
    certified_accuracy,
    certified_radius,
    certify_due,
    hoeffding,
    smoothed_votes,
    two_phi_minus_one,
    vote_probabilities,
)
from fl_core.config import config_hash, parse_config
from fl_core.defenses import make_defenses
from fl_core.defenses.base import AggregateContext
from fl_core.defenses.crfl import CRFL, clip_global, crfl_noise, rho_t
from fl_core.errors import ConfigError
from fl_core.rng import Stream, torch_generator
from fl_core.simulate import Simulation
from fl_core.state import load_state, save_state

SEED = 5


# -- the training step -------------------------------------------------------------------

def test_one_round_is_clip_then_noise_of_the_new_global():
    """w = (1, 1, 0), η = 0.5, mean = (4, 6, 0): w + η·mean = (3, 4, 0), norm 5. Round index 9
    is t = 10, ρ = 0.1·10 + 2 = 3 < 5: scaled by 3/(5 + 1e-6) (the authors' clip), then
    σ = 0.01 times the round's N(0, 1) draw from Stream.CRFL (9, 0)."""
    w = torch.tensor([1.0, 1.0, 0.0])
    mean = torch.tensor([4.0, 6.0, 0.0])
    ctx = AggregateContext(SEED, 9, 3, w, 0.5)
    crfl = CRFL(0.01, 0.1, 2.0, 15.0)
    z = torch.randn(3, generator=torch_generator(SEED, Stream.CRFL, 9, 0), dtype=torch.float32)
    coef = 3.0 / (5.0 + 1e-6)
    expected = torch.tensor([3.0 * coef, 4.0 * coef, 0.0], dtype=torch.float64).float() + 0.01 * z

    target, metrics = crfl.new_global(w, mean, ctx)
    assert torch.equal(target, expected)
    assert metrics == {"crfl_rho": pytest.approx(3.0, rel=1e-15), "crfl_global_norm": 5.0, "crfl_clipped": 1.0}

    # through the update protocol: the round applies w + η·Δ'. Δ' is (target − w)/η rounded
    # once to float32, so |η·Δ' − (target − w)| ≤ ½ ulp(target − w), and the float32 sum adds
    # ½ ulp(target): within one ulp of max(|target|, |target − w|) per coordinate.
    delta, m2 = crfl.on_aggregate(mean, ctx)
    assert m2 == metrics
    got = w + 0.5 * delta
    ulp = torch.finfo(torch.float32).eps * torch.maximum(target.abs(), (target - w).abs())
    assert torch.all((got - target).abs() <= ulp), (got - target, ulp)
    assert not torch.equal(got, w + 0.5 * mean)  # it did change the global model


def test_no_clip_below_the_bound_only_noise():
    """‖(0.3, 0.4)‖ = 0.5 ≤ ρ_1 = 2.1: unscaled, plus the noise of round 0."""
    w = torch.tensor([0.3, 0.4])
    out, norm = clip_global(w, 2.1)
    assert out is w and norm == pytest.approx(0.5, rel=1e-7)
    target, m = CRFL(0.5, 0.1, 2.0, 15.0).new_global(torch.zeros(2), w, AggregateContext(SEED, 0, 2, torch.zeros(2), 1.0))
    assert torch.equal(target, w + 0.5 * crfl_noise(torch.Size([2]), SEED, 0))
    assert m["crfl_clipped"] == 0.0 and m["crfl_rho"] == pytest.approx(2.1, rel=1e-15)


def test_noise_is_keyed_by_round_and_seed():
    a, b = crfl_noise(torch.Size([6]), SEED, 3), crfl_noise(torch.Size([6]), SEED, 3)
    assert torch.equal(a, b)
    assert not torch.equal(a, crfl_noise(torch.Size([6]), SEED, 4))
    assert not torch.equal(a, crfl_noise(torch.Size([6]), SEED + 1, 3))


def test_on_aggregate_needs_the_global_model():
    with pytest.raises(ValueError, match="global_params"):
        CRFL(0.01, 0.1, 2.0, 15.0).on_aggregate(torch.zeros(2), AggregateContext(SEED, 0, 2))


def test_rho_schedule_is_the_authors_mnist_one():
    """main.py: dynamic_thres = epoch·0.1 + 2, capped by param_clip_thres = 15, epoch from 1."""
    assert rho_t(1, 0.1, 2.0, 15.0) == pytest.approx(2.1, rel=1e-15)
    assert rho_t(50, 0.1, 2.0, 15.0) == 7.0  # 0.1·50 rounds to 5.0 in float64
    assert rho_t(129, 0.1, 2.0, 15.0) == pytest.approx(14.9, rel=1e-15)
    assert rho_t(131, 0.1, 2.0, 15.0) == 15.0 == rho_t(500, 0.1, 2.0, 15.0)


# -- the certificate ---------------------------------------------------------------------

def unit_threat(sigma=0.01, rho=lambda t: 2.0, t_adv=0) -> ThreatModel:
    """Every constant 1, ρ_adv = 0: L_z² = 2, so the denominator is 2·1·1·2·1·1·1·1 = 4."""
    return ThreatModel(sigma_train=sigma, sigma_test=sigma, lr=1.0, local_iters=1.0, attackers=1, clients=1,
                       gamma=1.0, poison_share=1.0, t_adv=t_adv, rho_adv=0.0, rho=rho)


def test_radius_by_hand():
    """p_A = 0.64, p_B = 0.04: √p_A − √p_B = 0.6, 1 − 0.36 = 0.64. With ρ/σ = 200 every
    2Φ − 1 is 1.0 in float64, so RAD = √(−ln 0.64 · σ² / 4) = (σ/2)·√(−ln 0.64)."""
    assert two_phi_minus_one(200.0) == 1.0
    r = certified_radius(0.64, 0.04, 3, unit_threat())
    assert r == pytest.approx(0.005 * math.sqrt(-math.log(0.64)), rel=1e-14)
    # ρ/σ = 1 in rounds t_adv+1..T−1 (= round 1) and T = 2: the contraction is (2Φ(1) − 1)²
    # = erf(1/√2)² ≈ 0.6827², which divides under the root: RAD grows by 1/0.6827
    r1 = certified_radius(0.64, 0.04, 2, unit_threat(sigma=1.0, rho=lambda t: 1.0))
    assert r1 == pytest.approx(0.5 * math.sqrt(-math.log(0.64)) / math.erf(1 / math.sqrt(2)), rel=1e-14)
    # abstain: p_A ≤ p_B certifies nothing (the authors' code would give a positive radius)
    assert certified_radius(0.3, 0.3, 3, unit_threat()) == -1.0
    assert certified_radius(0.2, 0.4, 3, unit_threat()) == -1.0


def authors_cal_prob_bound(pa, pb, sigma_test, epoch, training_params, agg_weight=None):
    """AI-secure/CRFL @ 549eb5305bb738cc45c60bc77e1fc2fea38084fe, certify_mnist.py
    `cal_prob_bound`, transcribed (MNIST branch; their ρ_t has no cap)."""
    from scipy.stats import norm

    sigma_train = training_params["sigma_param"]
    eta = training_params["lr"]
    T = epoch
    N = training_params["num_models"]
    R = len(training_params["adversary_list"])
    q_B = training_params["poisoning_per_batch"]
    n_B = training_params["batch_size"]
    gamma = training_params["scale_factor"]
    tau = 60000 / N / n_B
    rho_tadv = 3
    L_z = math.sqrt(2 + 2 * rho_tadv + rho_tadv ** 2)
    if agg_weight is None:
        agg_weight = [float(1 / N)] * R
    weighted_avg = sum(agg_weight[i] ** 2 for i in range(R))
    t_adv = training_params["poison_epochs"][0]
    if pa == 1.0:
        return 100000
    fraction = -math.log(1 - (math.sqrt(pa) - math.sqrt(pb)) ** 2) * sigma_train ** 2
    denominator = 2 * R * tau ** 2 * L_z ** 2 * weighted_avg * gamma ** 2 * eta ** 2 * float(q_B ** 2 / n_B ** 2)
    contract = 1
    for _epoch in range(t_adv + 1, T):
        rho_t_ = _epoch * 0.1 + 2
        contract *= 2 * norm.cdf(rho_t_ * 1.0 / sigma_train) - 1
    rho_T = T * 0.1 + 2
    contract *= 2 * norm.cdf(rho_T * 1.0 / sigma_test) - 1
    denominator = denominator * contract
    return math.sqrt(fraction / denominator)


@pytest.mark.parametrize("sigma", [0.01, 1.0, 4.0])  # 1 and 4: contraction factors well below 1
@pytest.mark.parametrize("pa,pb", [(0.9, 0.05), (0.6, 0.3), (0.999, 0.0005), (0.5, 0.49)])
def test_radius_matches_the_authors_formula(pa, pb, sigma):
    """Their MNIST config (configs/mnist_params.yaml: lr 0.001, batch 100, 20 models, adversaries
    [1, 2], 5 poisoned per batch, scale 100, poison epoch 70), T = 100. Ours uses erf where they
    use scipy's norm.cdf; the product of ~30 such factors agrees to ~1e-13 relative."""
    params = {"sigma_param": sigma, "lr": 0.001, "num_models": 20, "adversary_list": [1, 2],
              "poisoning_per_batch": 5, "batch_size": 100, "scale_factor": 100, "poison_epochs": [70]}
    tm = ThreatModel(sigma_train=sigma, sigma_test=sigma, lr=0.001, local_iters=60000 / 20 / 100, attackers=2,
                     clients=20, gamma=100.0, poison_share=5 / 100, t_adv=70, rho_adv=3.0,
                     rho=lambda t: rho_t(t, 0.1, 2.0, 15.0))
    ours = certified_radius(pa, pb, 100, tm)
    theirs = authors_cal_prob_bound(pa, pb, sigma, 100, params)
    assert ours == pytest.approx(theirs, rel=1e-12)


def test_hoeffding_is_the_authors_bound():
    """N_m = 1000, α = 0.001: h = √(ln 1000 / 2000) ≈ 0.05877; clamps at 1e-8 and 1 − 1e-8."""
    h = math.sqrt(math.log(1000) / 2000)
    pa, pb = hoeffding(np.array([0.9, 0.01]), np.array([0.1, 0.99]), 1000, 0.001)
    assert pa[0] == pytest.approx(0.9 - h, rel=1e-15) and pa[1] == 1e-8
    assert pb[0] == pytest.approx(0.1 + h, rel=1e-15) and pb[1] == 1 - 1e-8


def test_vote_count_and_certified_accuracy_by_hand():
    """Votes of 4 copies on 3 inputs: input 0 → [2, 2, 2, 1] (A = 2, p_A = .75, p_B = .25);
    input 1 → [0, 1, 1, 0]: a tie, A = 0 (lowest class, as np.argmax), p_A = p_B = .5;
    input 2 → all 3 (p_B = 0)."""
    votes = np.array([[2, 0, 3], [2, 1, 3], [2, 1, 3], [1, 0, 3]])
    top, pa, pb = vote_probabilities(votes, 4)
    assert top.tolist() == [2, 0, 3]
    assert pa.tolist() == [0.75, 0.5, 1.0] and pb.tolist() == [0.25, 0.5, 0.0]
    radii = np.array([0.3, -1.0, 2.0])
    is_acc = np.array([True, True, False])
    # r = 0: input 0 only (input 1 abstains, input 2 is wrong) → 1/3; r = 0.5: none
    assert certified_accuracy(radii, is_acc, [0.0, 0.3, 0.5]) == {
        "certified_acc_r0": 1 / 3, "certified_acc_r0.3": 1 / 3, "certified_acc_r0.5": 0.0}


def test_smoothed_votes_count_the_noisy_copies():
    """A one-parameter 'model' predicting class 1 where x + w > 0: copy m has w = 0 + σ·z_m,
    z_m the draw of Stream.CRFL (round 7, 1, m); the vote is counted here from those draws."""
    xs = np.array([-0.5, 0.0, 10.0])

    def predict(p, x):
        return (x + float(p[0]) > 0).astype(np.int64)

    (votes,) = smoothed_votes(predict, torch.zeros(1), [xs], 50, 1.0, SEED, 7)
    z = np.array([float(torch.randn(1, generator=torch_generator(SEED, Stream.CRFL, 7, 1, m))) for m in range(50)])
    expected = (xs[None, :] + z[:, None] > 0).astype(np.int64)
    assert np.array_equal(votes, expected)
    assert votes[:, 2].sum() == 50 and 0 < votes[:, 0].sum() < 50  # the noise did flip some votes


# -- in the simulation --------------------------------------------------------------------

TINY = {
    "seed": 11,
    "fl": {"rounds": 3, "clients_per_round": 4, "local_epochs": 1, "batch_size": 5, "eval_every": 1},
    "attack": {"kind": "model-replacement", "fraction": 0.2, "frequency": 2, "num_tasks": 3},
    "defense": {"crfl_sigma": 0.01, "crfl_rho_offset": 1.0, "crfl_rho_max": 1.2, "crfl_certify_every": 2,
                "crfl_certify_models": 6, "crfl_certify_radii": [0, 0.001, 1.0]},
}
DROP = {"round_seconds", "eval_seconds", "aggregate_seconds"}


def strip(ms):
    return [{k: v for k, v in m.items() if k not in DROP} for m in ms]


def test_simulation_clips_the_global_model_and_certifies(tiny_data):
    """ρ_t = min(0.1t + 1, 1.2) is below the CNN's initial norm, so every round clips: the new
    global minus the round's noise has norm ρ_t·‖w‖/(‖w‖+1e-6) (float32 rounding of ~1.2M
    squares: 1e-5 relative). Certification runs at round 2 (every 2) and 3 (the last)."""
    cfg = parse_config(TINY)
    assert [type(d).__name__ for d in make_defenses(cfg)] == ["CRFL"]
    sim = Simulation(cfg, data=tiny_data)
    ms = []
    for r in range(3):
        m = sim.step()
        ms.append(m)
        rho = rho_t(r + 1, 0.1, 1.0, 1.2)
        assert m["crfl_clipped"] == 1.0 and m["crfl_rho"] == pytest.approx(rho, rel=1e-15)
        clean = sim.state.global_params - 0.01 * crfl_noise(sim.state.global_params.shape, 11, r)
        assert float(clean.double().norm()) == pytest.approx(rho, rel=1e-5)
    assert [certify_due(cfg, r) for r in (1, 2, 3)] == [False, True, True]
    assert "certified_acc_r0" not in ms[0]
    for m in ms[1:]:
        keys = ["certified_acc_r0", "certified_acc_r0.001", "certified_acc_r1"]
        vals = [m[k] for k in keys]
        assert vals == sorted(vals, reverse=True) and vals[0] <= m["smoothed_acc"] <= 1
        assert 0 <= m["smoothed_backdoor_acc"] <= 1


def test_resume_is_bit_identical(tiny_data, tmp_path):
    cfg = parse_config(TINY)
    straight = Simulation(cfg, data=tiny_data)
    m_straight = straight.run()
    first = Simulation(cfg, data=tiny_data)
    m1 = [first.step()]
    save_state(tmp_path / "state.pt", first.state)
    resumed = Simulation(cfg, data=tiny_data, state=load_state(tmp_path / "state.pt", cfg))
    m2 = resumed.run()
    assert torch.equal(straight.state.global_params, resumed.state.global_params)
    assert strip(m_straight) == strip(m1 + m2)
    assert "certified_acc_r0" in m_straight[-1]


def test_weak_dp_noise_runs_before_crfl():
    """The aggregate hooks run in reverse chain order: CRFL (order −1) last, on the global model."""
    cfg = parse_config({"defense": {"norm_bound": 1.0, "noise_sigma": 0.1, "crfl_sigma": 0.01}})
    assert [type(d).__name__ for d in reversed(make_defenses(cfg))] == ["GaussianNoise", "NormClipping", "CRFL"]


# -- config ------------------------------------------------------------------------------

@pytest.mark.parametrize("defense,key,allowed", [
    ({"crfl_sigma": 0}, "defense.crfl_sigma", "greater than 0"),
    ({"crfl_rho_slope": 0.2}, "defense.crfl_rho_slope", "when defense.crfl_sigma is null"),
    ({"crfl_certify_models": 10}, "defense.crfl_certify_models", "when defense.crfl_sigma is null"),
    ({"crfl_sigma": 0.01, "crfl_rho_max": 1.0}, "defense.crfl_rho_max", "at least defense.crfl_rho_offset"),
    ({"crfl_sigma": 0.01, "crfl_certify_radii": [0, -1]}, "defense.crfl_certify_radii", "radii ≥ 0"),
    ({"crfl_sigma": 0.01, "crfl_certify_alpha": 1.0}, "defense.crfl_certify_alpha", "less than 1"),
    ({"crfl_sigma": 0.01, "crfl_certify_models": 1}, "defense.crfl_certify_models", "greater than or equal to 2"),
])
def test_config_errors_name_the_key(defense, key, allowed):
    with pytest.raises(ConfigError) as e:
        parse_config({"defense": defense})
    assert f"`{key}`" in str(e.value) and allowed in str(e.value)


def test_keys_are_hash_neutral_while_off():
    base = config_hash(parse_config({}))
    explicit = {"crfl_sigma": None, "crfl_rho_slope": 0.1, "crfl_rho_offset": 2, "crfl_rho_max": 15,
                "crfl_certify_every": None, "crfl_certify_models": 1000, "crfl_certify_alpha": 0.001,
                "crfl_certify_radii": [0, 0.5, 1, 2], "crfl_certify_gamma": 100, "crfl_certify_sigma": None}
    assert config_hash(parse_config({"defense": explicit})) == base
    assert config_hash(parse_config({"defense": {"crfl_sigma": 0.01}})) != base


def test_threat_model_from_the_config():
    """η, N from fl; R = 1 under fixed frequency (one attacker per attack round), round(ε·C·K)
    every round; t_adv = start_round + 1 (1-based); σ_T falls back to σ."""
    from fl_core.certify import threat_model

    base = {"fl": {"clients_per_round": 10, "client_lr": 0.05},
            "attack": {"kind": "model-replacement", "fraction": 0.3, "frequency": 2, "start_round": 4},
            "defense": {"crfl_sigma": 0.02}}
    tm = threat_model(parse_config(base))
    assert (tm.lr, tm.clients, tm.attackers, tm.t_adv, tm.sigma_test) == (0.05, 10, 1, 5, 0.02)
    every = parse_config({**base, "attack": {"kind": "model-replacement", "fraction": 0.3, "schedule": "every-round"},
                          "defense": {"crfl_sigma": 0.02, "crfl_certify_sigma": 0.01}})
    tm = threat_model(every)
    assert (tm.attackers, tm.t_adv, tm.sigma_test) == (3, 1, 0.01)
    assert threat_model(parse_config({"defense": {"crfl_sigma": 0.02}})).t_adv == 0
