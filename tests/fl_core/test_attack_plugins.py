"""The attack plug-ins (`fl_core/attacks/`): registration, parameters, planning, and golden
tests of the defining step of Neurotoxin and constrain-and-scale.

Same probe model as tests/fl_core/test_recipes.py: its logits are a bias vector b whatever
the input, so from b = 0 one SGD step at lr η on labels y moves b by η·(freq(y) − 0.1).
"""

from __future__ import annotations

import math

import pytest
import torch

from fl_core.attacks import ATTACKS
from fl_core.attacks.constrain_scale import ConstrainAndScale
from fl_core.attacks.neurotoxin import Neurotoxin, keep_mask
from fl_core.attacks.recipes import Mixed, Reference
from fl_core.training import SGDParams
from fl_core.config import config_hash, parse_config
from fl_core.errors import ConfigError
from fl_core.build import make_attack
from fl_core.sampling import Population, attacker_pool, plan_round
from tests.fl_core.test_recipes import LR, MAL, OWN, TOL, W0, Probe, gen, task


def test_every_attack_is_registered_with_a_label_and_builds():
    assert set(ATTACKS) >= {"none", "model-replacement", "pgd", "neurotoxin", "constrain-and-scale", "iba", "chameleon", "a3fl"}
    for name, spec in ATTACKS.items():
        cfg = parse_config({"attack": {"kind": name, "fraction": 0.1}, "defense": {"norm_bound": 3.0}})
        attack = make_attack(cfg)
        assert (attack is None) == (name == "none")
        assert spec.label and spec.name == name


def test_unknown_kind_and_params_are_refused_with_did_you_mean():
    with pytest.raises(ConfigError, match=r"attack.kind.*did you mean `neurotoxin`"):
        parse_config({"attack": {"kind": "neurotoxn", "fraction": 0.1}})
    with pytest.raises(ConfigError, match=r"attack.params.topk.*did you mean `top_k`"):
        parse_config({"attack": {"kind": "neurotoxin", "fraction": 0.1, "params": {"topk": 0.1}}})
    with pytest.raises(ConfigError, match=r"attack.params.top_k"):
        parse_config({"attack": {"kind": "neurotoxin", "fraction": 0.1, "params": {"top_k": 1.5}}})
    with pytest.raises(ConfigError, match=r"attack.params.*none takes no parameters"):
        parse_config({"attack": {"kind": "none", "params": {"x": 1}}})
    with pytest.raises(ConfigError, match=r"attack.params.pgd_iteration.*did you mean `pgd_iterations`"):
        parse_config({"attack": {"kind": "pgd", "fraction": 0.1, "params": {"pgd_iteration": 1}},
                      "defense": {"norm_bound": 3.0}})


def test_defaults_are_filled_in_so_equal_settings_hash_equally():
    a = parse_config({"attack": {"kind": "neurotoxin", "fraction": 0.1}})
    b = parse_config({"attack": {"kind": "neurotoxin", "fraction": 0.1, "params": {"top_k": 0.01}}})
    assert a.attack.params == {"top_k": 0.01, "pgd_iterations": 5, "recipe": "reference", "poison_fraction": 0.3125}
    assert config_hash(a) == config_hash(b)


@pytest.mark.parametrize("kind,bounded,radius", [
    ("model-replacement", False, None), ("pgd", True, 3.0 / 2.5),
    ("neurotoxin", True, 3.0 / 2.5), ("neurotoxin", False, None),
    ("constrain-and-scale", True, 3.0 / 2.5), ("constrain-and-scale", False, None),
])
def test_the_attack_plans_its_radius(kind, bounded, radius):
    """M/β for norm-bounded attacks under clipping (β = 2.5 forced by attack.boost), none otherwise."""
    cfg = parse_config({"seed": 1, "fl": {"clients_per_round": 4},
                        "attack": {"kind": kind, "fraction": 0.1, "frequency": 1, "boost": 2.5},
                        "defense": {"norm_bound": 3.0} if bounded else {}})
    pop = Population(40, tuple([10] * 40), attacker_pool(cfg, 40, (0,)))
    att = [t for t in plan_round(cfg, pop, 0).tasks if t.role == "attacker"]
    assert len(att) == 1 and att[0].boost == 2.5
    assert att[0].radius == (None if radius is None else pytest.approx(radius, rel=1e-12))


# -- Neurotoxin ---------------------------------------------------------------------------


def test_keep_mask_freezes_the_top_k_share_of_the_benign_update():
    d = torch.tensor([0.1, -0.5, 0.2, 0.0, 0.5])
    # top 40% of 5 = 2 coordinates by |d|: indices 1 and 4 (a tie: the stable sort keeps order)
    assert keep_mask(d, 0.4).tolist() == [1.0, 0.0, 1.0, 1.0, 0.0]
    assert keep_mask(d, 0.01).tolist() == [1.0, 0.0, 1.0, 1.0, 1.0]  # at least one coordinate


def test_neurotoxin_replacement_golden():
    """E = 1, B = 4 = n_own, top_k = 0.2 → 2 of the 10 biases frozen. Δ_benign (one step on
    {3,3,5,5}) is +0.04 at 3 and 5, −0.01 elsewhere: coordinates 3 and 5 are frozen. Then the
    reference recipe under the mask: Δ_benign' = −0.01 except 0 at 3, 5; Δ_mal (one step on
    the three 1s from w_t) = +0.09 at 1, −0.01 elsewhere, 0 at 3, 5. Sent with β = 2:
    Δ_benign' + 2·Δ_mal = 0.17 at 1, 0 at 3 and 5, −0.03 elsewhere."""
    model = Probe()
    sent, metrics = Neurotoxin(0.2, 5, Reference()).craft(task(2.0), model, W0, OWN, MAL, SGDParams(1, 4, LR), gen())
    want = torch.full((10,), -0.03)
    want[1], want[3], want[5] = 0.17, 0.0, 0.0
    assert torch.allclose(sent, want, atol=TOL), sent
    assert sent[3] == 0 and sent[5] == 0  # exactly: the mask multiplies every gradient
    assert metrics["frozen_share"] == pytest.approx(0.2)
    # the mask's own benign training, then the recipe's benign pass, then its D_mal step
    assert model.batches == [[1, 2, 3, 4], [1, 2, 3, 4], [101, 102, 103]]
    # no hook is left on the model
    b = model.b
    b.grad = None
    (b * torch.arange(10.0)).sum().backward()
    assert b.grad[3] == 3.0


def test_neurotoxin_under_clipping_projects_and_keeps_the_frozen_coordinates_at_zero():
    model = Probe()
    sent, _ = Neurotoxin(0.2, 3, Reference()).craft(task(30.0, radius=0.01), model, W0, OWN, MAL,
                                                    SGDParams(1, 4, LR), gen())
    assert sent[3] == 0 and sent[5] == 0
    # radius 0.01 is inside one pass's move (0.09 at coordinate 1): the passes end on the sphere
    assert math.isclose(float(sent.norm()), 30.0 * 0.01, rel_tol=1e-5)


# -- constrain-and-scale ------------------------------------------------------------------


def test_constrain_and_scale_with_alpha_one_is_the_mixed_recipe():
    """α = 1 drops the anomaly term: the same batches and steps as `mixed` replacement."""
    hp = SGDParams(2, 4, LR)
    a, _ = ConstrainAndScale(1.0, 0.5).craft(task(3.0), Probe(), W0, OWN, MAL, hp, gen())
    from fl_core.attacks.model_replacement import ModelReplacement

    b, _ = ModelReplacement(Mixed(0.5)).craft(task(3.0), Probe(), W0, OWN, MAL, hp, gen())
    assert torch.equal(a, b)


def test_constrain_and_scale_anomaly_term_golden():
    """B = 4, p = 0.5, one epoch = 2 steps. Step 1 starts at w = w_t: ‖w − w_t‖ = 0 and its
    (sub)gradient is 0, so w₁ = −η·α·g₁ with g₁ = 0.1 − freq(batch 1). Step 2 adds the anomaly
    gradient (1 − α)·(w₁ − w_t)/‖w₁ − w_t‖: w₂ = w₁ − η(α·g₂ + (1 − α)·w₁/‖w₁‖), with g₂ =
    softmax(w₁) − freq(batch 2). Recomputed here from the probe's recorded batches."""
    alpha = 0.6
    model = Probe()
    sent, _ = ConstrainAndScale(alpha, 0.5).craft(task(1.0), model, W0, OWN, MAL, SGDParams(1, 4, LR), gen())
    labels = {1: 3, 2: 3, 3: 5, 4: 5, 101: 1, 102: 1, 103: 1}

    def freq(batch):
        return torch.bincount(torch.tensor([labels[i] for i in batch]), minlength=10).double() / len(batch)

    w1 = -LR * alpha * (0.1 - freq(model.batches[0]))
    g2 = torch.softmax(w1, 0) - freq(model.batches[1])
    w2 = w1 - LR * (alpha * g2 + (1 - alpha) * w1 / w1.norm())
    assert torch.allclose(sent.double(), w2, atol=TOL), (sent, w2)
    # the anomaly term pulls towards w_t: the update is shorter than with α = 1 (CE only)
    plain, _ = ConstrainAndScale(1.0, 0.5).craft(task(1.0), Probe(), W0, OWN, MAL, SGDParams(1, 4, LR), gen())
    assert sent.norm() < plain.norm()


def test_constrain_and_scale_under_clipping_sends_at_most_m():
    sent, _ = ConstrainAndScale(0.7, 0.5).craft(task(40.0, radius=0.005), Probe(), W0, OWN, MAL,
                                                SGDParams(2, 4, LR), gen())
    assert float(sent.norm()) <= 40.0 * 0.005 * (1 + 1e-6)  # float32 rounding of the rescale


@pytest.mark.parametrize("kind,backend", [("neurotoxin", "sequential"), ("constrain-and-scale", "sequential"),
                                          ("dba", "sequential"), ("dba", "vectorized")])
def test_new_attacks_run_a_deterministic_simulation_and_resume_exactly(kind, backend, tiny_data, tmp_path):
    """Through the engine (plan → attacker craft → clipping → FedAvg), twice, and with a
    save/load in the middle: identical metrics and weights (torch.equal). With `vectorized`
    the benign clients train batched, the attacker through its plug-in."""
    from fl_core.simulate import Simulation
    from fl_core.state import load_state, save_state

    cfg = parse_config({
        "seed": 3, "fl": {"rounds": 4, "clients_per_round": 4, "local_epochs": 1, "batch_size": 5,
                          "backend": backend, "device": "cpu"},
        "attack": {"kind": kind, "fraction": 0.2, "frequency": 2, "num_tasks": 3, "pgd_iterations": 2},
        "defense": {"norm_bound": 2.0},
    })
    drop = {"round_seconds", "eval_seconds", "aggregate_seconds"}
    strip = lambda ms: [{k: v for k, v in m.items() if k not in drop} for m in ms]
    a = Simulation(cfg, data=tiny_data)
    ma = a.run()
    b = Simulation(cfg, data=tiny_data)
    mb = [b.step(), b.step()]
    save_state(tmp_path / "state.pt", b.state)
    c = Simulation(cfg, data=tiny_data, state=load_state(tmp_path / "state.pt", cfg))
    mb += c.run()
    assert strip(ma) == strip(mb) and torch.equal(a.state.global_params, c.state.global_params)
    assert sum(m["num_attackers"] for m in ma) == 2
    # the attacker's update passed clipping at M = 2 intact (it projects onto M/β)
    assert all(m["attacker_norm_pre"] <= 2.0 * (1 + 1e-5) for m in ma if m["num_attackers"])
    # the trigger task (DBA's) has no held-out set; the semantic one does
    assert all((m["backdoor_acc_heldout"] is None) == (kind == "dba") for m in ma)


def test_the_report_labels_and_orders_attacks_from_the_registry():
    from sweeper.report.load import _sort_value, format_value

    assert [format_value("attack.kind", k) for k in ("none", "model-replacement", "pgd", "neurotoxin")] == \
        ["no attack", "unconstrained", "PGD", "Neurotoxin"]
    assert format_value("attack.kind", "from-another-version") == "from-another-version"
    kinds = ["neurotoxin", "pgd", "none", "constrain-and-scale", "model-replacement"]
    assert sorted(kinds, key=lambda k: _sort_value("attack.kind", k)) == \
        ["none", "model-replacement", "pgd", "neurotoxin", "constrain-and-scale"]
