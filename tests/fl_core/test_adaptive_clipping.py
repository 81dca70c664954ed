"""Adaptive clipping (Andrew et al. 2021; fl_core/defenses/adaptive_clipping.py): the update
rule and the noise split on hand-computed cases, convergence to the target quantile, the
bound carried across rounds and through a checkpoint bit-exactly, and the config's checks.

No independent implementation is pinned: Flower (`flwr`, `compute_adaptive_noise_params` and
its adaptive-clipping strategies) is not installed in the project's venv and brings heavy
dependencies, TF-Privacy needs TensorFlow. So every number here is worked by hand; the
accounting side is cross-checked against dp-accounting in
tests/sweeper/report/test_report_privacy_adaptive.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fl_core.config import (
    adaptive_clip_noise,
    config_hash,
    parse_config,
    result_hash,
    update_noise_multiplier,
)
from fl_core.defenses import make_defenses
from fl_core.defenses.adaptive_clipping import AdaptiveClipping, next_bound, unclipped_share
from fl_core.defenses.base import AggregateContext, begin_round, end_round
from fl_core.errors import CheckpointError, ConfigError
from fl_core.rng import Stream, numpy_rng, torch_generator
from fl_core.simulate import Simulation
from fl_core.state import load_state, save_state

SEED, ROUND = 7, 3


def run_round(defense: AdaptiveClipping, norms, bound=None, dim=2):
    """One round of the defense on updates [n, 0, …] of the given norms (exact in float32
    and float64), the aggregate being their plain mean. Returns (clipped updates, mean
    after on_aggregate, metrics, next bound)."""
    state = {} if bound is None else {"clip_bound": torch.tensor(bound, dtype=torch.float64)}
    (rd,) = begin_round([defense], state)
    clipped, per_client = [], []
    for n in norms:
        d = torch.zeros(dim)
        d[0] = n
        c, m = rd.on_client(d)
        clipped.append(c)
        per_client.append(m["clip_fraction"])
    mean = torch.stack(clipped).mean(0)
    out, metrics = rd.on_aggregate(mean, AggregateContext(SEED, ROUND, len(norms)))
    metrics["clip_fraction"] = float(np.mean(per_client))
    return clipped, (mean, out), metrics, float(end_round([rd])["clip_bound"])


def defense(c0=2.5, quantile=0.5, lr=0.2, count_noise=0.0, z_update=0.0, m=4):
    return AdaptiveClipping(c0, quantile, lr, count_noise, z_update, m)


# -- the update rule, by hand ------------------------------------------------------------

def test_golden_median_bound_stays():
    # norms 1, 2, 3, 4 at C = 2.5: b = 1, 1, 0, 0; Σ(b − ½) = 0, so b̄ = 0/4 + ½ = 0.5 = γ and
    # C' = 2.5·exp(−0.2·0) = 2.5 exactly
    clipped, _, m, nxt = run_round(defense(), [1, 2, 3, 4])
    assert m["clip_bound"] == 2.5 and m["clip_unclipped_share"] == 0.5 and nxt == 2.5
    assert m["clip_fraction"] == 0.5
    assert [c[0].item() for c in clipped[:2]] == [1.0, 2.0]  # unclipped: the same values
    # clipped to 2.5: float32 rounding of 3·(2.5/3) and 4·(2.5/4) is at most one ulp (2⁻²²·2.5)
    assert all(abs(c[0].item() - 2.5) <= 2.5 * 2**-22 for c in clipped[2:])


def test_golden_bound_shrinks_when_too_few_are_clipped():
    # C = 3.5: b = 1, 1, 1, 0; Σ(b − ½) = 1, b̄ = 1/4 + ½ = 0.75; b̄ − γ = 0.25 and
    # 0.2·0.25 = 0.05 are exact in float64 (0.25 a power of two), so C' = 3.5·exp(−0.05) exactly
    _, _, m, nxt = run_round(defense(), [1, 2, 3, 4], bound=3.5)
    assert m["clip_bound"] == 3.5 and m["clip_unclipped_share"] == 0.75
    assert nxt == 3.5 * math.exp(-0.05)
    assert nxt < 3.5


def test_golden_bound_grows_when_all_are_clipped_and_equal_norm_is_unclipped():
    # C = 0.5 below every norm: b̄ = 0, C' = 0.5·exp(0.2·0.5) = 0.5·e^0.1 (the fastest growth)
    _, _, m, nxt = run_round(defense(), [1, 2, 3, 4], bound=0.5)
    assert m["clip_unclipped_share"] == 0.0 and nxt == 0.5 * math.exp(0.1)
    # a norm equal to the bound is unclipped (b_i = 1[‖Δ‖ ≤ C], TF-Privacy's `<=`)
    _, _, m, _ = run_round(defense(), [2, 2.5, 2.5, 3], bound=2.5)
    assert m["clip_unclipped_share"] == 0.75 and m["clip_fraction"] == 0.25


def test_pure_rule_matches_the_formula():
    # b̄ = clamp((Σ b − n/2 + noise)/m + ½): with n = m it is (Σ b + noise)/m
    assert unclipped_share(3, 4, 4, 0.0) == 0.75
    assert unclipped_share(2, 4, 4, 1.0) == 0.75  # (2 − 2 + 1)/4 + ½
    assert unclipped_share(4, 4, 4, 10.0) == 1.0 and unclipped_share(0, 4, 4, -10.0) == 0.0  # clamped
    assert next_bound(2.0, 0.5, 0.5, 0.2) == 2.0
    assert next_bound(2.0, 1.0, 0.5, 0.2) == 2.0 * math.exp(-0.1)


def test_count_noise_comes_from_the_clip_count_stream_of_the_round():
    sigma_b = 0.4
    _, _, m, nxt = run_round(defense(count_noise=sigma_b), [1, 2, 3, 4], bound=2.5)
    draw = sigma_b * float(numpy_rng(SEED, Stream.CLIP_COUNT, ROUND).standard_normal())
    expect = min(1.0, max(0.0, (0 + draw) / 4 + 0.5))
    assert draw != 0 and m["clip_unclipped_share"] == expect
    assert nxt == 2.5 * math.exp(-0.2 * (expect - 0.5))
    # a huge σ_b: b̄ is clamped to [0, 1], so C moves by at most e^{±η_C/2}
    _, _, m, nxt = run_round(defense(count_noise=1e6), [1, 2, 3, 4], bound=2.5)
    assert m["clip_unclipped_share"] in (0.0, 1.0)
    assert nxt in (2.5 * math.exp(0.1), 2.5 * math.exp(-0.1))


def test_update_noise_uses_the_bound_in_force_not_the_next_one():
    # z_Δ = 0.75, C_t = 3.5, 4 updates: the mean's noise std is z_Δ·C_t/4 = 0.65625 (exact);
    # C_{t+1} = 3.5·e^−0.05 would give another std
    _, (mean, out), m, nxt = run_round(defense(z_update=0.75), [1, 2, 3, 4], bound=3.5, dim=5)
    assert m["noise_std_on_mean"] == 0.65625 and nxt != 3.5
    gen = torch_generator(SEED, Stream.DP_NOISE, ROUND)
    expected = mean + 0.65625 * torch.randn(5, generator=gen, dtype=torch.float32)
    assert torch.equal(out, expected)
    # without DP no noise and no noise metric
    _, (mean, out), m, _ = run_round(defense(), [1, 2, 3, 4], bound=3.5, dim=5)
    assert torch.equal(out, mean) and "noise_std_on_mean" not in m


# -- the noise split (Andrew et al. Thm 1; TFF / Flower's compute_adaptive_noise_params) -----

def test_update_noise_multiplier_by_hand():
    # z = 0.6, σ_b = 0.5: z⁻² − (2σ_b)⁻² = 25/9 − 1 = 16/9, so z_Δ = 3/4; 0.6 is inexact in
    # binary, and the three float ops each add ≤ 1 ulp: 1e-14 relative is ample
    assert update_noise_multiplier(0.6, 0.5) == pytest.approx(0.75, rel=1e-14)
    # z = 1, σ_b = 1: (1 − 1/4)^−½ = 2/√3
    assert update_noise_multiplier(1.0, 1.0) == pytest.approx(2 / math.sqrt(3), rel=1e-14)
    assert update_noise_multiplier(0.0, 0.0) == 0.0  # no DP: no update noise
    for z, sb in ((1.0, 0.5), (1.0, 0.0), (2.0, 0.9)):  # 2σ_b ≤ z: the count spends it all
        with pytest.raises(ValueError):
            update_noise_multiplier(z, sb)


def raw(**defense):
    return {"seed": 3, "fl": {"clients_per_round": 30}, "defense": {"norm_bound": 3.0, **defense}}


def test_adaptive_clip_noise_from_the_config():
    # σ = 0.03 on the sum at C₀ = 3: z = 0.01; σ_b = 30/20 = 1.5, z_Δ = (10⁴ − 1/9)^−½
    sb, zd = adaptive_clip_noise(parse_config(raw(clip_quantile=0.5, noise_sigma=0.03)))
    assert sb == 1.5 and zd == pytest.approx((1e4 - 1 / 9) ** -0.5, rel=1e-14)
    # placement mean: σ = 0.1 on the mean of 30 at C₀ = 3 is z = 0.1·30/3 = 1; σ_b = 1.5
    sb, zd = adaptive_clip_noise(parse_config(raw(clip_quantile=0.5, noise_sigma=0.1, noise_placement="mean")))
    assert sb == 1.5 and zd == pytest.approx((1 - 1 / 9) ** -0.5, rel=1e-14)
    # no DP: σ_b defaults to 0 (TFF, Flower), or what is set; z_Δ = 0
    assert adaptive_clip_noise(parse_config(raw(clip_quantile=0.5))) == (0.0, 0.0)
    assert adaptive_clip_noise(parse_config(raw(clip_quantile=0.5, clip_count_noise=2.0))) == (2.0, 0.0)


# -- convergence to the target quantile ----------------------------------------------------

@pytest.mark.parametrize("quantile,c0", [(0.5, 0.1), (0.5, 1000.0), (0.8, 0.1), (0.2, 50.0)])
def test_bound_converges_to_the_target_quantile_without_count_noise(quantile, c0):
    # norms 1..20 every round: a bound C in [20γ, 20γ + 1) leaves exactly 20γ unclipped, b̄ = γ,
    # so C stops there. From 0.1 it needs ln(20γ/0.1)/(0.2·γ) rounds at most (≤ 60 here),
    # and a step near the target is ≤ e^{0.2·0.05}, too small to jump past the interval.
    d = defense(c0=c0, quantile=quantile, m=20)
    bound = c0
    for _ in range(200):
        _, _, _, bound = run_round(d, range(1, 21), bound=bound)
    lo = 20 * quantile
    assert lo <= bound < lo + 1, bound


def test_bound_tracks_the_quantile_under_count_noise():
    # 100 norms 1..100 per round, σ_b = m/20 = 5 (b̄'s noise std 0.05), γ = 0.5. Without
    # clamping, the geometric rule telescopes: Σ_t (b̄_t − γ) = −ln(C_T/C_0)/η_C over the R
    # rounds after burn-in, and b̄_t = (true share)_t + noise_t/m. So
    #   |mean true share − γ| ≤ |ln(C_T/C_0)|/(η_C R) + |mean noise_t|/m,
    # and the mean of R draws of N(0, 5²)/100 stays below 4·0.05/√R (4 σ: fails w.p. 6e-5;
    # the draws are seeded, CLIP_COUNT of seed 7, rounds 0..299).
    m, quantile, lr = 100, 0.5, 0.2
    d = AdaptiveClipping(1.0, quantile, lr, 5.0, 0.0, m)
    norms = np.arange(1, m + 1)
    bound, burn, rounds = 1.0, 100, 300
    true, start = [], None
    for t in range(rounds):
        if t == burn:
            start = bound
        (rd,) = begin_round([d], {"clip_bound": torch.tensor(bound, dtype=torch.float64)})
        for n in norms:
            rd.on_client(torch.tensor([float(n)]))
        _, metrics = rd.on_aggregate(torch.zeros(1), AggregateContext(SEED, t, m))
        if t >= burn:
            assert 0 < metrics["clip_unclipped_share"] < 1  # not clamped: the identity holds
            true.append(float(np.mean(norms <= bound)))
        bound = float(end_round([rd])["clip_bound"])
    r = rounds - burn
    gap = abs(np.mean(true) - quantile)
    assert gap <= abs(math.log(bound / start)) / (lr * r) + 4 * 0.05 / math.sqrt(r), (gap, start, bound)


# -- state across rounds and checkpoints ---------------------------------------------------

TINY = {
    "seed": 11,
    "fl": {"rounds": 4, "clients_per_round": 4, "local_epochs": 1, "batch_size": 5, "eval_every": 1},
    "attack": {"kind": "model-replacement", "fraction": 0.2, "frequency": 2, "num_tasks": 3},
    "defense": {"norm_bound": 0.5, "clip_quantile": 0.5, "noise_sigma": 0.01},
}
DROP = {"round_seconds", "eval_seconds", "aggregate_seconds"}


def strip(ms):
    return [{k: v for k, v in m.items() if k not in DROP} for m in ms]


def test_resume_is_bit_identical_and_carries_the_bound(tiny_data, tmp_path):
    cfg = parse_config(TINY)
    assert [type(d).__name__ for d in make_defenses(cfg)] == ["AdaptiveClipping"]
    straight = Simulation(cfg, data=tiny_data)
    m_straight = straight.run()

    # the metrics chain: round 1 clips at C₀, every later bound follows from the one before
    assert m_straight[0]["clip_bound"] == 0.5
    for prev, cur in zip(m_straight, m_straight[1:]):
        assert cur["clip_bound"] == next_bound(prev["clip_bound"], prev["clip_unclipped_share"], 0.5, 0.2)
    assert len({m["clip_bound"] for m in m_straight}) > 1  # it moved
    sb, zd = adaptive_clip_noise(cfg)  # σ_b = 4/20 = 0.2, z = 0.01/0.5 = 0.02
    assert all(m["noise_std_on_mean"] == zd * m["clip_bound"] / 4 for m in m_straight)

    first = Simulation(cfg, data=tiny_data)
    m1 = [first.step(), first.step()]
    save_state(tmp_path / "state.pt", first.state)
    loaded = load_state(tmp_path / "state.pt", cfg)
    assert loaded.defense_state.keys() == {"clip_bound"}
    assert torch.equal(loaded.defense_state["clip_bound"], first.state.defense_state["clip_bound"])
    assert loaded.defense_state["clip_bound"].dtype == torch.float64
    resumed = Simulation(cfg, data=tiny_data, state=loaded)
    m2 = resumed.run()

    assert torch.equal(straight.state.global_params, resumed.state.global_params)
    assert torch.equal(straight.state.defense_state["clip_bound"], resumed.state.defense_state["clip_bound"])
    assert strip(m_straight) == strip(m1 + m2)

    # the bound really is carried: a resume that lost it restarts from C₀ and differs
    lost = Simulation(cfg, data=tiny_data, state=loaded.replace(defense_state={}))
    m_lost = lost.run()
    assert m_lost[0]["clip_bound"] == 0.5 != m2[0]["clip_bound"]
    assert not torch.equal(lost.state.global_params, straight.state.global_params)


def test_fixed_clipping_keeps_no_defense_state(tiny_data):
    cfg = parse_config({**TINY, "fl": {**TINY["fl"], "rounds": 1},
                        "defense": {"norm_bound": 0.5, "noise_sigma": 0.01}})
    assert [type(d).__name__ for d in make_defenses(cfg)] == ["NormClipping", "GaussianNoise"]
    sim = Simulation(cfg, data=tiny_data)
    (m,) = sim.run()
    assert sim.state.defense_state == {} and "clip_bound" not in m and "clip_fraction" in m


@pytest.fixture
def saved(tmp_path):
    from fl_core.models import NUM_PARAMS
    from fl_core.state import SimulationState

    cfg = parse_config(TINY)
    path = tmp_path / "state.pt"
    save_state(path, SimulationState(2, torch.zeros(NUM_PARAMS), result_hash(cfg),
                                     defense_state={"clip_bound": torch.tensor(0.75, dtype=torch.float64)}))
    return path, cfg


def _forge(path, drop=(), **entries):
    p = torch.load(path, weights_only=True)
    p.update(entries)
    for k in drop:
        p.pop(k)
    torch.save(p, path)


def test_a_checkpoint_from_before_defense_state_loads_as_empty(saved):
    path, cfg = saved
    assert float(load_state(path, cfg).defense_state["clip_bound"]) == 0.75
    _forge(path, drop=("defense_state",))
    assert load_state(path, cfg).defense_state == {}


@pytest.mark.parametrize("entry,field", [
    ({"clip_bound": torch.tensor(float("nan"), dtype=torch.float64)}, "defense_state.clip_bound"),
    ({"clip_bound": 0.75}, "defense_state.clip_bound"),
    ([torch.zeros(1)], "defense_state"),
])
def test_a_forged_defense_state_is_a_checkpoint_error(saved, entry, field):
    path, cfg = saved
    _forge(path, defense_state=entry)
    with pytest.raises(CheckpointError, match=f"`{field}`"):
        load_state(path, cfg)


@pytest.mark.parametrize("bad", [torch.tensor(-1.0, dtype=torch.float64), torch.tensor(0.5),
                                 torch.tensor([1.0, 2.0], dtype=torch.float64)])
def test_a_bound_that_is_not_one_positive_float64_is_refused(bad):
    with pytest.raises(CheckpointError, match="defense_state.clip_bound"):
        defense().begin_round({"clip_bound": bad})


# -- configuration ---------------------------------------------------------------------------

@pytest.mark.parametrize("defense_cfg,key", [
    ({"norm_bound": 3.0, "clip_quantile": 1.5}, "defense.clip_quantile"),
    ({"norm_bound": 3.0, "clip_quantile": -0.1}, "defense.clip_quantile"),
    ({"clip_quantile": 0.5}, "defense.norm_bound"),  # C₀ is the norm bound: required
    ({"norm_bound": 3.0, "clip_lr": 0.5}, "defense.clip_lr"),  # does nothing without γ
    ({"norm_bound": 3.0, "clip_count_noise": 1.0}, "defense.clip_count_noise"),
    ({"norm_bound": 3.0, "clip_quantile": 0.5, "clip_lr": 0.0}, "defense.clip_lr"),
    ({"norm_bound": 3.0, "clip_quantile": 0.5, "clip_lr": 11.0}, "defense.clip_lr"),
    ({"norm_bound": 3.0, "clip_quantile": 0.5, "clip_count_noise": -1.0}, "defense.clip_count_noise"),
    # z = σ/C₀ = 1 with the default σ_b = 30/20 = 1.5: fine; σ_b = 0.5 leaves 2σ_b = 1 ≤ z
    ({"norm_bound": 3.0, "noise_sigma": 3.0, "clip_quantile": 0.5, "clip_count_noise": 0.5},
     "defense.clip_count_noise"),
    # z = 4: the default σ_b = 1.5 is too small (2σ_b = 3 ≤ 4)
    ({"norm_bound": 3.0, "noise_sigma": 12.0, "clip_quantile": 0.5}, "defense.clip_count_noise"),
])
def test_bad_settings_are_a_config_error_naming_the_key(defense_cfg, key):
    with pytest.raises(ConfigError) as e:
        parse_config({"fl": {"clients_per_round": 30}, "defense": defense_cfg})
    assert e.value.path == key, str(e.value)
    parse_config({"fl": {"clients_per_round": 30}, "defense": {"norm_bound": 3.0, "noise_sigma": 3.0,
                                                              "clip_quantile": 0.5}})


def test_the_new_keys_leave_every_other_config_hash_alone():
    base = {"fl": {"clients_per_round": 30}, "defense": {"norm_bound": 3.0, "noise_sigma": 0.1}}
    plain = parse_config(base)
    spelled = parse_config({**base, "defense": {**base["defense"], "clip_quantile": None, "clip_lr": 0.2,
                                                "clip_count_noise": None}})
    assert config_hash(plain) == config_hash(spelled) and result_hash(plain) == result_hash(spelled)
    on = parse_config({**base, "defense": {**base["defense"], "clip_quantile": 0.5}})
    assert config_hash(on) != config_hash(plain)
    other = parse_config({**base, "defense": {**base["defense"], "clip_quantile": 0.5, "clip_lr": 0.1}})
    assert config_hash(other) != config_hash(on)


@pytest.mark.parametrize("backend", ["sequential", "vectorized"])
def test_runs_on_every_backend_with_a_robust_rule(tiny_data, backend):
    # the defense is server side (RoundFold), so every backend and both aggregator paths
    # (streaming FedAvg above, the stacked matrix of a robust rule here) go through it
    cfg = parse_config({**TINY, "fl": {**TINY["fl"], "rounds": 2, "backend": backend},
                        "defense": {**TINY["defense"], "aggregator": "median"}})
    sim = Simulation(cfg, data=tiny_data)
    m = sim.run()
    assert m[0]["clip_bound"] == 0.5
    assert m[1]["clip_bound"] == next_bound(0.5, m[0]["clip_unclipped_share"], 0.5, 0.2)
    assert float(sim.state.defense_state["clip_bound"]) == next_bound(
        m[1]["clip_bound"], m[1]["clip_unclipped_share"], 0.5, 0.2)


def test_a_grid_may_sweep_the_quantile_and_a_bad_pair_fails_before_anything_runs(tmp_path):
    # a grid checks each axis value on its own model first: the cross-field rules must not
    # fire there (γ alone has no C₀), only on the expanded trials
    from sweeper.errors import GridError
    from sweeper.grid import load_grid

    text = """
name: adaclip
base:
  data: {{source: synthetic, num_writers: 40, examples_per_writer: 10}}
  fl: {{rounds: 2, clients_per_round: 4}}
  attack: {{num_tasks: 3}}
  defense: {{norm_bound: 3.0, noise_sigma: {sigma}}}
grid:
  defense.clip_quantile: [null, 0.5, 0.9]
seeds: 1
"""
    (tmp_path / "g.yaml").write_text(text.format(sigma=0.01))
    g = load_grid(tmp_path / "g.yaml")
    assert [t.config.defense.clip_quantile for t in g.trials] == [None, 0.5, 0.9]
    assert len({t.trial_key for t in g.trials}) == 3
    # σ = 3 at C₀ = 3 is z = 1; the default σ_b = 4/20 = 0.2 leaves 2σ_b = 0.4 ≤ z
    (tmp_path / "g.yaml").write_text(text.format(sigma=3.0))
    with pytest.raises(GridError, match="clip_count_noise"):
        load_grid(tmp_path / "g.yaml")
