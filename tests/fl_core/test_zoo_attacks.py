"""The zoo's model-poisoning attacks (`alie`, `alie-backdoor`, `ipm`, `sign-flip`,
`gaussian`, `label-flip`): registration, golden cases of each forge step on small integers
(float64 arithmetic on them is exact, so most asserts are torch.equal), the own-data path,
label flipping's labels, the backdoor carrier's band and training, determinism, and a tiny
simulation per attack on both backends under the `every-round` schedule.

The probe model of tests/fl_core/test_recipes.py (logits = a bias vector b) makes one SGD
step from b = 0 on labels y move b by η·(freq(y) − 0.1).
"""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from fl_core.attacks import ATTACKS
from fl_core.attacks.alie import ALIE, derived_z
from fl_core.attacks.alie_backdoor import ALIEBackdoor, clamp_to_band
from fl_core.attacks.base import ForgeContext
from fl_core.attacks.gaussian import Gaussian
from fl_core.attacks.ipm import IPM
from fl_core.attacks.label_flip import LabelFlip, flip_labels
from fl_core.attacks.sign_flip import SignFlip
from fl_core.config import parse_config
from fl_core.data import load_data
from fl_core.round import apply_round
from fl_core.simulate import Simulation
from fl_core.state import SimulationState
from fl_core.training import SGDParams, local_train
from fl_core.types import ClientResult, ClientTask, RoundPlan
from tests.fl_core.test_recipes import LR, MAL, OWN, TOL, W0, Probe, gen, task

KINDS = ("alie", "alie-backdoor", "ipm", "sign-flip", "gaussian", "label-flip")


def ctx(n: int, f: int, knowledge="omniscient", round_idx=0) -> ForgeContext:
    return ForgeContext(0, round_idx, n, f, knowledge, None)


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


KNOWN = t([[1, 0], [3, 4]])  # μ = (2, 2), σ (ddof 0) = (1, 2)
OWN_ROWS = t([[5, -1], [2, 3]])


# -- registration -------------------------------------------------------------------------


def test_the_attacks_are_registered_after_the_existing_ones_with_their_defaults():
    for kind in KINDS:
        spec = ATTACKS[kind]
        assert spec.label and spec.rank > ATTACKS["dba"].rank and spec.backdoor is None
    ranks = [ATTACKS[k].rank for k in KINDS]
    assert len(set(ranks)) == len(ranks)
    params = lambda kind, **p: parse_config(  # noqa: E731
        {"attack": {"kind": kind, "fraction": 0.2, "params": p}}).attack.params
    assert params("alie") == {"knowledge": "omniscient", "z": None}
    assert params("alie-backdoor") == {"z": None, "alpha": 0.2}
    assert params("ipm") == {"knowledge": "omniscient", "epsilon": 0.1}
    assert params("sign-flip") == {"knowledge": "omniscient"}
    assert params("gaussian") == {"mu": 0.0, "sigma": 1.0}
    assert params("label-flip") == {}


def test_bad_params_are_refused_at_validation():
    from fl_core.errors import ConfigError

    for kind, p in [("ipm", {"epsilon": 0}), ("alie", {"knowledge": "all"}), ("gaussian", {"sigma": -1.0}),
                    ("alie-backdoor", {"alpha": 1.5}), ("alie-backdoor", {"knowledge": "own-data"}),
                    ("label-flip", {"flip": 1})]:
        with pytest.raises(ConfigError, match=r"attack.params"):
            parse_config({"attack": {"kind": kind, "fraction": 0.2, "params": p}})


def test_the_attack_modules_import_without_torch():
    code = "import sys, fl_core.attacks as a; assert {'alie','ipm','gaussian'} <= set(a.ATTACKS); " \
           "assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# -- ALIE ---------------------------------------------------------------------------------


def test_alie_z_from_n_and_f_by_hand():
    """n = 10, f = 2: s = ⌊6⌋ − 2 = 4, quantile (10 − 2 − 4)/8 = 0.5, z = Φ⁻¹(0.5) = 0 exactly.
    n = 50, f = 10: s = 26 − 10 = 16, quantile 24/40 = 0.6, z = Φ⁻¹(0.6) ≈ 0.2533 (tables).
    Checked through Φ(z) = (1 + erf(z/√2))/2, independent of statistics.NormalDist: erf is
    good to ~1e-16, and Φ'(z) = φ(0.2533) ≈ 0.386, so |Φ(z) − 0.6| < 1e-15 puts z within
    3e-15 of the true quantile; a wrong quantile (e.g. 0.5 or 0.625) is off by ≥ 0.02."""
    assert derived_z(10, 2) == 0.0
    z = derived_z(50, 10)
    assert round(z, 4) == 0.2533
    assert abs(0.5 * (1 + math.erf(z / math.sqrt(2))) - 0.6) < 1e-15
    # n = 4, f = 1: s = 2, quantile 1/3 < 1/2: z < 0 (the formula, small f)
    assert abs(0.5 * (1 + math.erf(derived_z(4, 1) / math.sqrt(2))) - 1 / 3) < 1e-15
    for n, f in [(2, 1), (5, 3), (1, 1)]:  # quantile 0 or ≥ 1: undefined
        with pytest.raises(ValueError, match="attack.params.z"):
            derived_z(n, f)


def test_alie_forges_mean_plus_z_std_for_every_attacker():
    """μ = (2, 2), σ = (1, 2) (population std: √(((1−2)² + (3−2)²)/2) = 1, √((4 + 4)/2) = 2);
    z = 0.5 → (2.5, 3) in both attacker rows; z = −1 → (1, 0)."""
    sent, m = ALIE(0.5, "omniscient").forge(KNOWN, OWN_ROWS, ctx(4, 2), gen())
    assert torch.equal(sent, t([[2.5, 3], [2.5, 3]])) and m == {"alie_z": 0.5}
    sent, _ = ALIE(-1.0, "omniscient").forge(KNOWN, OWN_ROWS, ctx(4, 2), gen())
    assert torch.equal(sent, t([[1, 0], [1, 0]]))
    # derived z: n = 4, f = 2 → s = 1, quantile 1/2, z = 0: the mean itself
    sent, m = ALIE(None, "omniscient").forge(KNOWN, OWN_ROWS, ctx(4, 2), gen())
    assert torch.equal(sent, t([[2, 2], [2, 2]])) and m["alie_z"] == 0.0
    # the inputs are left alone
    assert torch.equal(KNOWN, t([[1, 0], [3, 4]])) and torch.equal(OWN_ROWS, t([[5, -1], [2, 3]]))


def test_alie_takes_the_authors_step_in_update_terms():
    """The authors send μ_g − z·σ_g on gradients and the server steps −η·that. With z = 1,
    η = 0.5 and gradients (1, 0), (3, 4): μ_g − σ_g = (2 − 1, 2 − 2) = (1, 0), a step of
    (−0.5, 0). Our updates are Δ = −η·g = (−0.5, 0), (−1.5, −2): μ + z·σ = (−1, −1) +
    (0.5, 1) = (−0.5, 0), the same step (so +z·σ here is the authors' −z·σ)."""
    eta, grads = 0.5, t([[1, 0], [3, 4]])
    authors_step = -eta * (grads.mean(0) - grads.std(0, correction=0))
    sent, _ = ALIE(1.0, "omniscient").forge(-eta * grads, OWN_ROWS[:1], ctx(3, 1), gen())
    assert torch.equal(sent[0], authors_step) and torch.equal(authors_step, t([-0.5, 0]))


def test_an_omniscient_forge_with_no_benign_update_says_what_to_change():
    with pytest.raises(ValueError, match="own-data"):
        ALIE(1.0, "omniscient").forge(KNOWN[:0], OWN_ROWS, ctx(2, 2), gen())


def result(k, role, delta):
    return ClientResult(k, 0, role, 1, t(delta))


ROUND = [result(0, "benign", [1, 0]), result(1, "attacker", [0, 5]), result(2, "benign", [3, 0]),
         result(3, "attacker", [0, 7])]


def hook_round(kind, rounds=1, **params):
    """One server round through `apply_round` (the round hook, then FedAvg with n_k = 1) on
    benign (1, 0), (3, 0) and attackers whose honest updates are (0, 5), (0, 7)."""
    c = parse_config({"seed": 3, "fl": {"clients_per_round": 4},
                      "attack": {"kind": kind, "fraction": 0.5, "schedule": "every-round", "num_tasks": 1,
                                 "params": params}})
    plan = RoundPlan(0, tuple(ClientTask(0, r.client_index, 0, r.role, 0) for r in ROUND))
    state = SimulationState(round_idx=0, global_params=torch.zeros(2), config_hash="test")
    return apply_round(c, state, plan, ROUND, defenses=[])


def test_alie_omniscient_and_own_data_through_the_round():
    """Omniscient: μ = (2, 0), σ = (1, 0), z = 1 → both attackers send (3, 0); mean of
    (1,0), (3,0), (3,0), (3,0) = (2.5, 0). Own-data: μ, σ of (0,5), (0,7) = (0, 6), (0, 1)
    → (0, 7) each; mean of (1,0), (0,7), (3,0), (0,7) = (1, 3.5)."""
    new, stats = hook_round("alie", z=1.0)
    assert torch.equal(new.global_params, t([2.5, 0])) and stats.extra["alie_z"] == 1.0
    new, _ = hook_round("alie", z=1.0, knowledge="own-data")
    assert torch.equal(new.global_params, t([1, 3.5]))


# -- IPM, sign flipping, Gaussian ---------------------------------------------------------


def test_ipm_sends_minus_epsilon_times_the_mean():
    sent, _ = IPM(0.5, "omniscient").forge(KNOWN, OWN_ROWS, ctx(4, 2), gen())
    assert torch.equal(sent, t([[-1, -1], [-1, -1]]))
    # own-data through the round: −0.5·mean((0,5), (0,7)) = (0, −3); mean (1,0),(0,−3),(3,0),(0,−3) = (1, −1.5)
    new, _ = hook_round("ipm", epsilon=0.5, knowledge="own-data")
    assert torch.equal(new.global_params, t([1, -1.5]))
    # omniscient: −0.5·(2, 0) = (−1, 0); mean (1,0),(−1,0),(3,0),(−1,0) = (0.5, 0)
    new, _ = hook_round("ipm", epsilon=0.5)
    assert torch.equal(new.global_params, t([0.5, 0]))


def test_sign_flip_negates_the_benign_mean_or_each_own_update():
    sent, _ = SignFlip("omniscient").forge(KNOWN, OWN_ROWS, ctx(4, 2), gen())
    assert torch.equal(sent, t([[-2, -2], [-2, -2]]))
    sent, _ = SignFlip("own-data").forge(OWN_ROWS, OWN_ROWS, ctx(4, 2, "own-data"), gen())
    assert torch.equal(sent, t([[-5, 1], [-2, -3]]))  # each attacker its own, not the mean
    new, _ = hook_round("sign-flip", knowledge="own-data")  # (1,0),(0,−5),(3,0),(0,−7) → (1, −3)
    assert torch.equal(new.global_params, t([1, -3]))


def test_gaussian_draws_from_the_forge_generator_only():
    g = Gaussian(1.0, 2.0)
    own = torch.zeros(3, 5)
    torch.manual_seed(123)  # the global RNG must not matter
    a, _ = g.forge(own, own, ctx(6, 3, "own-data"), torch.Generator().manual_seed(9))
    torch.manual_seed(456)
    b, _ = g.forge(own, own, ctx(6, 3, "own-data"), torch.Generator().manual_seed(9))
    want = torch.randn(3, 5, generator=torch.Generator().manual_seed(9)) * 2.0 + 1.0
    assert torch.equal(a, b) and torch.equal(a, want) and a.dtype == torch.float32
    assert not torch.equal(a[0], a[1])  # each attacker its own draw
    c, _ = g.forge(own, own, ctx(6, 3, "own-data"), torch.Generator().manual_seed(10))
    assert not torch.equal(a, c)
    # σ = 0: exactly μ; the attacker's craft trains nothing
    z, _ = Gaussian(-0.5, 0.0).forge(own, own, ctx(6, 3, "own-data"), gen())
    assert torch.equal(z, torch.full((3, 5), -0.5))
    sent, _ = g.craft(task(1.0), Probe(), W0, OWN, MAL, SGDParams(1, 4, LR), gen())
    assert torch.equal(sent, torch.zeros(10))


def test_the_forge_draw_is_keyed_by_seed_and_round():
    """Through the round: the same (seed, round) gives the same bits, another round others."""
    a, _ = hook_round("gaussian")
    b, _ = hook_round("gaussian")
    assert torch.equal(a.global_params, b.global_params)
    c = parse_config({"seed": 3, "fl": {"clients_per_round": 4},
                      "attack": {"kind": "gaussian", "fraction": 0.5, "schedule": "every-round", "num_tasks": 1}})
    plan = RoundPlan(1, tuple(ClientTask(1, r.client_index, 0, r.role, 0) for r in ROUND))
    state = SimulationState(round_idx=1, global_params=torch.zeros(2), config_hash="test")
    d, _ = apply_round(c, state, plan, ROUND, defenses=[])
    assert not torch.equal(a.global_params, d.global_params)


# -- label flipping -----------------------------------------------------------------------


def test_label_flip_maps_y_to_nine_minus_y():
    assert flip_labels(torch.arange(10)).tolist() == [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]


def test_label_flip_trains_the_ordinary_client_on_flipped_labels_unboosted():
    """OWN's labels {3, 3, 5, 5} become {6, 6, 4, 4}; E = 1, B = 4: one step from 0 moves b
    by 0.1·(0.5 − 0.1) = +0.04 at 4 and 6, −0.01 elsewhere, whatever β (10 here)."""
    model = Probe()
    sent, metrics = LabelFlip().craft(task(10.0), model, W0, OWN, MAL, SGDParams(1, 4, LR), gen())
    want = torch.full((10,), -0.01)
    want[4] = want[6] = 0.04
    assert torch.allclose(sent, want, atol=TOL), sent
    assert model.batches == [[1, 2, 3, 4]] and "train_loss" in metrics  # own data only, no D_mal
    assert OWN.labels.tolist() == [3, 3, 5, 5]  # the attacker's data is not modified


# -- ALIE as a backdoor carrier -----------------------------------------------------------


def test_the_backdoor_carrier_clamps_each_update_to_the_benign_band():
    """z = 1: band [μ − σ, μ + σ] = [1, 3] × [0, 4]; (5, −1) → (3, 0), (2, 3) stays. A
    negative z gives the same band (|z|); 2 of 4 coordinates moved."""
    sent, m = ALIEBackdoor(1.0, 0.2).forge(KNOWN, OWN_ROWS, ctx(4, 2), gen())
    assert torch.equal(sent, t([[3, 0], [2, 3]]))
    assert m == {"alie_z": 1.0, "alie_clamped_share": 0.5}
    assert torch.equal(clamp_to_band(OWN_ROWS, KNOWN, -1.0, 0), sent)
    # z = 0: the band is the mean
    assert torch.equal(clamp_to_band(OWN_ROWS, KNOWN, 0.0, 0), t([[2, 2], [2, 2]]))


def test_the_backdoor_carrier_with_alpha_one_is_plain_training_on_own_and_d_mal():
    hp = SGDParams(2, 3, LR)
    a, _ = ALIEBackdoor(None, 1.0).craft(task(5.0), Probe(), W0, OWN, MAL, hp, gen())
    b, _ = local_train(Probe(), W0, OWN.cat(MAL), hp, gen())
    assert torch.equal(a, b)  # unboosted, and the pull's hooks add exactly 0


def test_the_backdoor_carrier_distance_term_golden():
    """E = 2, B = 7 = |own ∪ D_mal|: one full-batch step per epoch on labels {3,3,5,5,1,1,1}.
    Step 1 starts at w_t = 0, where the pull is 0: b₁ = −η·α·g₁, g₁ = 0.1 − freq. Step 2:
    b₂ = b₁ − η(α·g₂ + (1 − α)·2·b₁/10), g₂ = softmax(b₁) − freq (the probe's one layer
    has 10 weights: MSE's gradient is 2(w − w_t)/10)."""
    alpha = 0.2
    model = Probe()
    sent, _ = ALIEBackdoor(None, alpha).craft(task(1.0), model, W0, OWN, MAL, SGDParams(2, 7, LR), gen())
    assert model.batches == [[1, 2, 3, 4, 101, 102, 103]] * 2
    freq = torch.bincount(torch.tensor([3, 3, 5, 5, 1, 1, 1]), minlength=10).double() / 7
    b1 = -LR * alpha * (0.1 - freq)
    b2 = b1 - LR * (alpha * (torch.softmax(b1, 0) - freq) + (1 - alpha) * 2 * b1 / 10)
    assert torch.allclose(sent.double(), b2, atol=TOL), (sent, b2)
    no_pull = b1 - LR * alpha * (torch.softmax(b1, 0) - freq)
    assert (sent.double() - no_pull).abs().max() > 100 * TOL  # the term is there
    b = model.b  # no hook is left on the model
    b.grad = None
    (b * torch.arange(10.0)).sum().backward()
    assert b.grad[3] == 3.0


# -- end to end ---------------------------------------------------------------------------


def sim_config(kind, backend, **attack):
    """K = 12 synthetic writers, 5 per round, ε = 0.4 of each round: f = 2 attackers of n = 5
    every round (ALIE's z: s = 3 − 2 = 1, quantile 2/3, z ≈ 0.43)."""
    return parse_config({
        "seed": 4, "data": {"source": "synthetic", "num_writers": 12, "examples_per_writer": 8},
        "fl": {"rounds": 2, "clients_per_round": 5, "local_epochs": 1, "batch_size": 8, "backend": backend,
               "device": "cpu", "eval_every": 1},
        "attack": {"kind": kind, "fraction": 0.4, "schedule": "every-round", "num_tasks": 2, "max_tasks": 2,
                   **attack},
    })


@pytest.fixture(scope="module")
def synthetic():
    return load_data(sim_config("alie", "sequential").data, 4)


@pytest.mark.parametrize("backend", ["sequential", "vectorized"])
@pytest.mark.parametrize("kind", KINDS)
def test_each_attack_runs_a_simulation_on_both_backends(kind, backend, synthetic):
    sim = Simulation(sim_config(kind, backend), data=synthetic)
    history = sim.run()
    assert [m["num_attackers"] for m in history] == [2, 2]
    assert bool(torch.isfinite(sim.state.global_params).all())
    last = history[-1]
    assert last["main_acc"] is not None and last["backdoor_acc"] is not None  # the semantic task's
    if kind in ("alie", "alie-backdoor"):
        z = 0.5 * (1 + math.erf(last["alie_z"] / math.sqrt(2)))
        assert abs(z - 2 / 3) < 1e-12


def test_a_derived_z_is_refused_before_any_round_where_rounds_leave_it_undefined():
    from fl_core.build import make_attack
    from fl_core.errors import ConfigError

    def cfg(kind, n, eps, schedule, **params):
        return parse_config({"fl": {"clients_per_round": n}, "attack": {
            "kind": kind, "fraction": eps, "schedule": schedule, "num_tasks": 1, "params": params}})

    for kind in ("alie", "alie-backdoor"):
        for n, eps, schedule in [(10, 0.2, "random-sampling"),  # f varies per round
                                 (2, 0.5, "every-round"),         # n = 2: quantile 0
                                 (5, 0.6, "every-round"),         # f = 3 of 5: quantile 1
                                 (2, 0.5, "fixed-frequency")]:    # f = 1 of 2
            with pytest.raises(ConfigError, match="attack.params.z"):
                make_attack(cfg(kind, n, eps, schedule))
            assert make_attack(cfg(kind, n, eps, schedule, z=1.0)) is not None  # a given z is fine
        assert make_attack(cfg(kind, 10, 0.2, "every-round")) is not None  # f = 2 of 10: z = 0


@pytest.mark.parametrize("schedule,params", [("fixed-frequency", {}), ("random-sampling", {"z": 1.0})])
def test_alie_runs_under_the_other_schedules(schedule, params, synthetic):
    sim = Simulation(sim_config("alie", "sequential", schedule=schedule, frequency=1, params=params), data=synthetic)
    history = sim.run()
    assert bool(torch.isfinite(sim.state.global_params).all())
    if schedule == "fixed-frequency":  # one attacker of n = 5: s = 2, quantile 1/2, z = 0
        assert [m["num_attackers"] for m in history] == [1, 1] and history[-1]["alie_z"] == 0.0
    else:  # pool members the cohort draws: 5 of the 12 writers
        assert sum(m["num_attackers"] for m in history) >= 1
        assert all(m["alie_z"] == 1.0 for m in history if m["num_attackers"])


def test_the_backdoor_carrier_runs_with_the_trigger_task(synthetic):
    sim = Simulation(sim_config("alie-backdoor", "sequential", backdoor="trigger"), data=synthetic)
    history = sim.run()
    assert history[-1]["backdoor_acc"] is not None and 0 <= history[-1]["alie_clamped_share"] <= 1


def test_a_forged_simulation_is_deterministic_and_seeded(synthetic):
    runs = [Simulation(sim_config("gaussian", "sequential"), data=synthetic) for _ in range(2)]
    for s in runs:
        s.run()
    assert torch.equal(runs[0].state.global_params, runs[1].state.global_params)
    other = Simulation(parse_config({**sim_config("gaussian", "sequential").model_dump(), "seed": 5}),
                       data=synthetic)
    other.run()
    assert not torch.equal(other.state.global_params, runs[0].state.global_params)


def test_an_undefined_derived_z_is_refused_when_the_config_is_validated():
    """The spec's `check` runs in parse_config, so a grid fails before any trial starts."""
    from fl_core.config import parse_config
    from fl_core.errors import ConfigError

    for kind in ("alie", "alie-backdoor"):
        with pytest.raises(ConfigError, match=r"attack\.params\.z"):
            parse_config({"fl": {"clients_per_round": 10},
                          "attack": {"kind": kind, "fraction": 0.2, "schedule": "random-sampling", "num_tasks": 3}})
        parse_config({"fl": {"clients_per_round": 10},  # a given z is always accepted
                      "attack": {"kind": kind, "fraction": 0.2, "schedule": "random-sampling", "num_tasks": 3,
                                 "params": {"z": 1.5}}})
