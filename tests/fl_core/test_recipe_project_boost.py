"""Golden tests of the `project-boost` recipe (`fl_core/attacks/recipes.py`): the paper's
driver's `ClientProjectBoost` (google-research/federated `targeted_attack/attacked_fedavg.py`
as built by `emnist_with_targeted_attack.py`) with a bound that never binds under model
replacement, and the same passes as `reference` under PGD.

The probe model and the hand-worked step (from b = 0 one SGD step at lr η on labels y moves
the bias by η·(freq(y) − 0.1)) are those of tests/fl_core/test_recipes.py.
"""

from __future__ import annotations

import pytest
import torch

from fl_core.attacks.base import RECIPES
from fl_core.attacks.model_replacement import ModelReplacement
from fl_core.attacks.pgd import NormBoundedPGD
from fl_core.attacks.recipes import ProjectBoost, Reference, full_batch_step
from fl_core.config import flatten, parse_config
from fl_core.params import get_flat, set_flat
from fl_core.training import SGDParams, sgd_epochs
from tests.fl_core.test_recipes import LR, MAL, OWN, TOL, W0, Probe, gen, step_from_zero, task


def make_recipe(kind: str, p: int = 5):
    """The recipe as the registry builds it for `kind`'s params."""
    cfg = parse_config({
        "attack": {"kind": kind, "fraction": 0.1, "params": {"recipe": "project-boost",
                                                              **({"pgd_iterations": p} if kind == "pgd" else {})}},
        "defense": {"norm_bound": 3.0} if kind == "pgd" else {},
    })
    from fl_core.attacks import ATTACKS

    spec = ATTACKS[cfg.attack.kind]
    return RECIPES["project-boost"].build(spec.params.model_validate(cfg.attack.params), cfg)


def test_registered_and_named_in_the_flat_view():
    assert "project-boost" in RECIPES
    cfg = parse_config({"attack": {"kind": "model-replacement", "fraction": 0.1, "params": {"recipe": "project-boost"}}})
    assert cfg.attack.params["recipe"] == "project-boost"
    assert flatten(cfg)["attack.recipe"] == "project-boost"


def test_passes_come_from_pgd_iterations_and_default_to_the_drivers_five():
    """pgd: P = attack.params.pgd_iterations; model-replacement has no such key (RecipeParams):
    the driver's `client_round_num` default, 5."""
    assert make_recipe("pgd", 3).passes == 3
    assert make_recipe("model-replacement").passes == 5


def test_one_pass_by_hand():
    """P = 1, E = 1, B = 4 = n_own. Step 1 from b = 0 on {3,3,5,5}: b1 = +0.04 at 3 and 5,
    −0.01 elsewhere. Step 2 (the full-batch D_mal step, labels all 1) starts from b1, NOT from
    w_t as `reference`'s Δ_mal does: b2 = b1 − η·(softmax(b1) − onehot(1)). Sent β·b2, all of
    it boosted (reference boosts only the D_mal step)."""
    model = Probe()
    sent, metrics = ModelReplacement(ProjectBoost(1)).craft(task(10.0), model, W0, OWN, MAL, SGDParams(1, 4, LR), gen())
    b1 = step_from_zero([3, 3, 5, 5])
    assert torch.allclose(model.starts[1], b1, atol=TOL)  # chained: the D_mal step starts at b1
    onehot = torch.zeros(10)
    onehot[1] = 1.0
    b2 = b1 - LR * (torch.softmax(b1.double(), 0).float() - onehot)
    assert torch.allclose(sent, 10.0 * b2, atol=10 * TOL), sent
    assert model.batches == [[1, 2, 3, 4], [101, 102, 103]]
    assert set(metrics) == {"train_loss", "malicious_loss"}
    # and it is not `reference`: that one sends Δ_benign + β·(step from w_t)
    ref, _ = ModelReplacement(Reference()).craft(task(10.0), Probe(), W0, OWN, MAL, SGDParams(1, 4, LR), gen())
    assert (sent - ref).abs().max() > 0.1


@pytest.mark.parametrize("p", [1, 3])
def test_replacement_equals_a_hand_rolled_loop_bit_for_bit(p):
    """P passes of {E epochs over own data in minibatches; one full-batch step on D_mal} from
    w_t, no projection, then β·(w − w_t): the same steps written out, with the same generator
    and a real (dropout-free) network, give the same bits (torch.equal)."""
    hp = SGDParams(2, 3, LR)
    beta = 7.0

    def net():
        torch.manual_seed(0)  # the two copies start from the same weights (test-local, scoped)
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 16), torch.nn.ReLU(),
                                   torch.nn.Linear(16, 10))

    with torch.random.fork_rng():
        a_model, b_model = net(), net()
    w_t = get_flat(a_model).clone()
    sent, _ = ModelReplacement(ProjectBoost(p)).craft(task(beta), a_model, w_t, OWN, MAL, hp, gen())

    g = gen()
    set_flat(b_model, w_t)
    for _ in range(p):
        sgd_epochs(b_model, OWN, hp, g)
        full_batch_step(b_model, MAL, hp.lr)
    want = beta * (get_flat(b_model) - w_t)
    assert torch.equal(sent, want)
    # P matters: one pass fewer is another update
    if p > 1:
        fewer, _ = ModelReplacement(ProjectBoost(p - 1)).craft(task(beta), net(), w_t, OWN, MAL, hp, gen())
        assert not torch.equal(fewer, sent)


def test_pass_contents_under_model_replacement():
    """P = 2, E = 2, B = 2: each pass is 2 epochs × 2 own batches then ONE batch of all of
    D_mal, and the second pass starts where the first ended."""
    model = Probe()
    ModelReplacement(ProjectBoost(2)).craft(task(3.0), model, W0, OWN, MAL, SGDParams(2, 2, LR), gen())
    assert len(model.batches) == 2 * 5
    for q in range(2):
        own = model.batches[5 * q: 5 * q + 4]
        assert model.batches[5 * q + 4] == [101, 102, 103]
        for e in range(2):
            assert sorted(own[2 * e] + own[2 * e + 1]) == [1, 2, 3, 4]
    assert not torch.equal(model.starts[5], W0)  # pass 2 continues from pass 1's end point


def test_under_pgd_it_is_reference_bit_for_bit():
    """Under `pgd` both recipes' pass is ClientProjectBoost's; the attack projects after each:
    the same bits, projected (radius 0.01 binds) or not (radius 10)."""
    hp = SGDParams(2, 3, LR)
    for radius in (0.01, 10.0):
        a, _ = NormBoundedPGD(3, ProjectBoost(3)).craft(task(30.0, radius), Probe(), W0, OWN, MAL, hp, gen())
        b, _ = NormBoundedPGD(3, Reference()).craft(task(30.0, radius), Probe(), W0, OWN, MAL, hp, gen())
        assert torch.equal(a, b)
    assert abs(float(a.norm()) - 0) > 0  # not trivially zero


def test_unbound_replacement_equals_pgd_with_a_bound_that_never_binds_up_to_rounding():
    """model-replacement + project-boost vs pgd at a radius no pass reaches (the issue's
    check at M = 10^6): the same steps, but pgd re-sets the model to w_t + (w − w_t) after
    every pass, so the two agree to float32 rounding (here exactly: w_t = 0), not by design."""
    hp = SGDParams(1, 4, LR)
    a, _ = ModelReplacement(ProjectBoost(3)).craft(task(30.0), Probe(), W0, OWN, MAL, hp, gen())
    b, _ = NormBoundedPGD(3, Reference()).craft(task(30.0, 1e6), Probe(), W0, OWN, MAL, hp, gen())
    assert torch.allclose(a, b, atol=30 * TOL)


def test_project_boost_runs_through_the_engine(tiny_data):
    """Two rounds, one attacker per round, through `Simulation`: the recipe runs end to end
    and gives another trajectory than `reference` (same seed)."""
    from fl_core.simulate import Simulation

    def run(recipe):
        cfg = parse_config({
            "fl": {"rounds": 2, "clients_per_round": 3, "local_epochs": 1, "batch_size": 5, "device": "cpu"},
            "attack": {"kind": "model-replacement", "fraction": 0.1, "num_tasks": 2, "max_tasks": 2,
                       "schedule": "fixed-frequency", "frequency": 1, "params": {"recipe": recipe}},
        })
        sim = Simulation(cfg, data=tiny_data)
        history = sim.run()
        return sim.state.global_params, history

    (pb, hist), (ref, _) = run("project-boost"), run("reference")
    assert len(hist) == 2 and torch.isfinite(pb).all()
    assert not torch.equal(pb, ref)
