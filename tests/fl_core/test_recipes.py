"""Golden tests of the attack recipes (`fl_core/attacks/recipes.py`) under both attacks:
which data each pass sees, how many steps, where the projection and the boost apply, and
the FedAvg weight the attacker reports.

The model is a probe: its logits are a bias vector b (10 parameters) whatever the input,
and it records each minibatch it sees (the images carry their id in pixel [0, 0]) and the
bias it started that step from. For logits = b the mean cross-entropy's gradient is
softmax(b) − mean(onehot(y)), so from b = 0 one SGD step at lr η moves b by
η · (freq(y) − 0.1): every number below is worked by hand from that.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fl_core.attacks.model_replacement import ModelReplacement
from fl_core.attacks.pgd import NormBoundedPGD
from fl_core.attacks.base import RECIPES
from fl_core.attacks.recipes import Mixed, Reference, Union
from fl_core.client import ClientRunner
from fl_core.training import ClientData, SGDParams
from fl_core.config import flatten, parse_config
from fl_core.errors import ConfigError
from fl_core.types import ClientTask

LR = 0.1
# float32 arithmetic on values of order 1: a few ulps (2^-24 ≈ 6e-8 each) per step; 1e-6
# bounds ten steps' worth with room, and a wrong formula is off by ≥ 1e-3 here.
TOL = 1e-6


class Probe(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.b = torch.nn.Parameter(torch.zeros(10))
        self.batches: list[list[int]] = []
        self.starts: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(sorted(int(round(v)) for v in (x[:, 0, 0, 0] * 255).tolist()))
        self.starts.append(self.b.detach().clone())
        return self.b.expand(x.shape[0], 10)


def data(ids: list[int], labels: list[int]) -> ClientData:
    px = torch.zeros(len(ids), 28, 28, dtype=torch.uint8)
    px[:, 0, 0] = torch.tensor(ids, dtype=torch.uint8)
    return ClientData(px, torch.tensor(labels, dtype=torch.long))


OWN = data([1, 2, 3, 4], [3, 3, 5, 5])
MAL = data([101, 102, 103], [1, 1, 1])
W0 = torch.zeros(10)


def gen() -> torch.Generator:
    return torch.Generator().manual_seed(7)


def task(beta: float, radius: float | None = None) -> ClientTask:
    return ClientTask(0, 0, 0, "attacker", 1, beta, radius)


def step_from_zero(labels: list[int]) -> torch.Tensor:
    """One SGD step from b = 0 on a batch with these labels: η · (freq − 0.1)."""
    freq = torch.bincount(torch.tensor(labels), minlength=10).double() / len(labels)
    return (LR * (freq - 0.1)).float()


# -- the unconstrained attack -----------------------------------------------------------


def test_reference_replacement_is_benign_plus_boosted_one_full_batch_step():
    """E = 1, B = 4 = n_own: Δ_benign is one step on {3,3,5,5}: +0.04 at 3 and 5, −0.01
    elsewhere. Δ_mal is one step on all 3 D_mal images (label 1), from w_t (not from the
    benign end point): +0.09 at 1, −0.01 elsewhere. β = 10 multiplies Δ_mal only:
    sent = [−.11, .89, −.11, −.06, −.11, −.06, −.11, −.11, −.11, −.11]."""
    model = Probe()
    sent, _ = ModelReplacement(Reference()).craft(task(10.0), model, W0, OWN, MAL, SGDParams(1, 4, LR), gen())
    want = torch.full((10,), -0.11)
    want[1], want[3], want[5] = 0.89, -0.06, -0.06
    assert torch.allclose(sent, want, atol=TOL), sent
    assert model.batches == [[1, 2, 3, 4], [101, 102, 103]]
    assert torch.equal(model.starts[1], W0)  # Δ_mal taken from w_t


def test_reference_replacement_benign_part_runs_local_epochs_in_minibatches():
    model = Probe()
    ModelReplacement(Reference()).craft(task(10.0), model, W0, OWN, MAL, SGDParams(3, 2, LR), gen())
    own_batches, mal_batches = model.batches[:-1], model.batches[-1:]
    assert len(own_batches) == 3 * 2  # 3 epochs × ceil(4 / 2) minibatches
    for e in range(3):  # every epoch covers the own data once
        assert sorted(own_batches[2 * e] + own_batches[2 * e + 1]) == [1, 2, 3, 4]
    assert mal_batches == [[101, 102, 103]]  # then ONE step on all of D_mal


def test_union_replacement_boosts_all_of_a_union_update():
    """B = 7 = n_own + |D_mal|, E = 1: one step on {3,3,5,5,1,1,1}; sent = β·Δ."""
    model = Probe()
    sent, _ = ModelReplacement(Union()).craft(task(10.0), model, W0, OWN, MAL, SGDParams(1, 7, LR), gen())
    assert torch.allclose(sent, 10.0 * step_from_zero([3, 3, 5, 5, 1, 1, 1]), atol=10 * TOL)
    assert model.batches == [[1, 2, 3, 4, 101, 102, 103]]


def test_mixed_replacement_every_batch_carries_the_poison_share():
    """B = 4, p = 0.5: 2 D_mal + 2 own images per batch; 4 own images → 2 batches per epoch;
    D_mal cycles: its first 3 draws are a permutation of D_mal, the 4th starts a new one."""
    model = Probe()
    assert Mixed(0.5).split(4) == (2, 2)
    assert Mixed(0.3125).split(20) == (14, 6)  # round(0.3125·20) = 6 (Bagdasaryan: 20 of 64)
    sent, _ = ModelReplacement(Mixed(0.5)).craft(task(10.0), model, W0, OWN, MAL, SGDParams(1, 4, LR), gen())
    assert len(model.batches) == 2
    own = [i for b in model.batches for i in b if i < 100]
    mal = [i for b in model.batches for i in b if i > 100]
    assert sorted(own) == [1, 2, 3, 4] and all(sum(i > 100 for i in b) == 2 for b in model.batches)
    assert set(mal) == {101, 102, 103} and len(mal) == 4
    # first step from 0: its batch has two own labels and two 1s
    first_labels = [1, 1] + [3 if i in (1, 2) else 5 for i in model.batches[0] if i < 100]
    assert torch.allclose(model.starts[1], step_from_zero(first_labels), atol=TOL)
    # the boost multiplies the whole update: sent / β = the model's end point − w_t
    assert torch.allclose(sent / 10.0, model.b.detach(), atol=TOL)


# -- the norm-bounded attack ------------------------------------------------------------


@pytest.mark.parametrize("recipe", ["reference", "union", "mixed"])
def test_pgd_projects_after_every_pass_and_boosts_the_projected_point(recipe):
    """Radius 0.01 is far inside one pass's move (≥ 0.04 in some coordinate), so every pass
    ends ON the sphere: each pass after the first starts from a point of norm 0.01, and the
    sent update is β·diff with norm β·0.01 = M."""
    cfg_recipe = {"reference": Reference(), "union": Union(), "mixed": Mixed(0.5)}[recipe]
    model = Probe()
    hp = SGDParams(1, 4, LR)
    sent, _ = NormBoundedPGD(3, cfg_recipe).craft(task(30.0, radius=0.01), model, W0, OWN, MAL, hp, gen())
    assert math.isclose(float(sent.norm()), 30.0 * 0.01, rel_tol=1e-5)
    per_pass = len(model.batches) // 3
    assert len(model.batches) == 3 * per_pass
    for p in (1, 2):
        start = model.starts[p * per_pass]
        assert math.isclose(float(start.norm()), 0.01, rel_tol=1e-5), (p, start)
    assert torch.equal(model.starts[0], W0)


def test_pgd_pass_contents_per_recipe():
    """Which data one pass sees, with E = 2 local epochs and B = 2:
    reference: 2 epochs × 2 own batches, then ONE full D_mal batch (5 steps);
    union: ONE epoch over own ∪ D_mal (7 images → 4 batches), E notwithstanding;
    mixed: E = 2 epochs of mixed batches (1 own + 1 D_mal each at p = 0.5 → 4 per epoch)."""
    hp = SGDParams(2, 2, LR)
    seen = {}
    for name, r in {"reference": Reference(), "union": Union(), "mixed": Mixed(0.5)}.items():
        model = Probe()
        NormBoundedPGD(1, r).craft(task(30.0, radius=10.0), model, W0, OWN, MAL, hp, gen())
        seen[name] = model.batches
    ref = seen["reference"]
    assert len(ref) == 5 and ref[-1] == [101, 102, 103] and all(max(b) < 100 for b in ref[:-1])
    assert len(seen["union"]) == 4
    assert sorted(i for b in seen["union"] for i in b) == [1, 2, 3, 4, 101, 102, 103]
    assert len(seen["mixed"]) == 8 and all(len(b) == 2 and max(b) > 100 > min(b) for b in seen["mixed"])


def test_pgd_inside_the_ball_is_not_projected():
    """Radius 10 ≫ any move: the sent update is exactly β·(w_P − w_t) of the free passes."""
    model = Probe()
    sent, _ = NormBoundedPGD(2, Reference()).craft(task(5.0, radius=10.0), model, W0, OWN, MAL, SGDParams(1, 4, LR), gen())
    assert torch.allclose(sent, 5.0 * model.b.detach(), atol=5 * TOL)


# -- through the engine -----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["model-replacement", "pgd"])
@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_attacker_reports_its_own_example_count_as_fedavg_weight(tiny_data, kind, recipe):
    cfg = parse_config({
        "attack": {"kind": kind, "fraction": 0.1, "num_tasks": 2, "recipe": recipe, "pgd_iterations": 1},
        "defense": {"norm_bound": 3.0} if kind == "pgd" else {},
        "fl": {"local_epochs": 1, "clients_per_round": 3},
    })
    runner = ClientRunner(cfg, tiny_data, "cpu")
    k = 5
    t = ClientTask(0, k, 0, "attacker", 3, 3.0, 1.0 if kind == "pgd" else None)
    from fl_core.simulate import initial_state

    (res,) = runner.run([t], initial_state(cfg).global_params)
    assert res.role == "attacker" and res.num_examples == tiny_data.num_train(k)
    assert torch.isfinite(res.delta).all() and res.delta.abs().max() > 0


def test_pgd_pass_key_was_replaced_by_recipe():
    with pytest.raises(ConfigError) as e:
        parse_config({"attack": {"kind": "pgd", "pgd_pass": "original"}})
    assert e.value.path == "attack.pgd_pass" and "attack.params.recipe" in str(e.value)


def test_default_recipe_is_the_reference_code():
    assert flatten(parse_config({}))["attack.recipe"] == "reference"
    cfg = parse_config({"attack": {"kind": "model-replacement", "fraction": 0.1}})
    assert cfg.attack.params["recipe"] == "reference"


def test_unknown_recipe_names_the_allowed_ones():
    with pytest.raises(ConfigError) as e:
        parse_config({"attack": {"recipe": "bagdasaryan"}})
    assert e.value.path == "attack.recipe" and "reference" in e.value.allowed and "mixed" in e.value.allowed


def test_recipes_are_deterministic_given_the_generator():
    for r in (Reference(), Union(), Mixed(0.4)):
        a, _ = ModelReplacement(r).craft(task(3.0), Probe(), W0, OWN, MAL, SGDParams(2, 3, LR), gen())
        b, _ = ModelReplacement(r).craft(task(3.0), Probe(), W0, OWN, MAL, SGDParams(2, 3, LR), gen())
        assert torch.equal(a, b)
    assert np.isfinite(float(a.sum()))
