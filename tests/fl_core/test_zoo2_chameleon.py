"""Chameleon (`fl_core/attacks/chameleon.py`): registration and parameters, golden cases of
its supervised-contrastive loss, a cross-check against a numpy transcription of the authors'
SupConLoss, the lr schedule, the two phases (the head untouched in the first, the encoder
frozen bit for bit in the second), the PGD radius under clipping, determinism, and a tiny
simulation under both backdoor tasks, with and without clipping.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fl_core.attacks import ATTACKS
from fl_core.attacks.base import pgd_radius
from fl_core.attacks.chameleon import Chameleon, ChameleonParams, head_module, lr_at, penultimate, supcon_loss
from fl_core.config import parse_config
from fl_core.data import load_data
from fl_core.errors import ConfigError
from fl_core.models import CNN
from fl_core.params import get_flat
from fl_core.rng import client_rng_scope
from fl_core.simulate import Simulation
from fl_core.training import ClientData, SGDParams, to_input
from fl_core.types import ClientTask

# float64 on values of order 1: each op rounds by ≤ 2^-53 ≈ 1.1e-16 relative; the losses
# below take a few dozen ops, so 1e-12 holds with a factor > 100 to spare, and a wrong term
# (a weight, a missing positive, a divisor) moves them by ≥ 1e-2.
TOL64 = 1e-12


# -- registration and parameters -----------------------------------------------------------


def test_registered_with_the_authors_defaults_and_the_pgd_radius():
    spec = ATTACKS["chameleon"]
    assert spec.label == "Chameleon" and spec.radius is pgd_radius and not spec.needs_bound
    assert spec.backdoor is None  # semantic and trigger both
    assert spec.rank > ATTACKS["dba"].rank
    params = parse_config({"attack": {"kind": "chameleon", "fraction": 0.1}}).attack.params
    assert params == {
        "poison_fraction": 7 / 64, "temperature": 0.07, "target_weight": 6.0,
        "encoder_epochs": 10, "encoder_lr": 0.005, "encoder_milestones": [3, 5, 7, 9], "encoder_gamma": 0.1,
        "head_epochs": 3, "head_lr": 0.001, "head_milestones": [3, 5], "head_gamma": 0.005,
        "momentum": 0.9, "weight_decay": 5e-4,
    }


@pytest.mark.parametrize("key,value", [
    ("temperature", 0), ("target_weight", -1.0), ("encoder_epochs", 0), ("head_epochs", 0),
    ("encoder_lr", 0), ("head_lr", -0.1), ("momentum", 1.0), ("weight_decay", -1e-4),
    ("encoder_gamma", 1.5), ("head_gamma", 0), ("poison_fraction", 1.0),
    ("encoder_milestones", [5, 3]), ("head_milestones", [0, 2]), ("encoder_milestones", [3, 3]),
    ("encoder_epochs", 2.5),
])
def test_bad_params_are_refused_at_validation_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=rf"attack\.params\.{key}"):
        parse_config({"attack": {"kind": "chameleon", "fraction": 0.1, "params": {key: value}}})


def test_an_unknown_param_gets_a_did_you_mean():
    with pytest.raises(ConfigError, match=r"attack\.params\.temprature.*did you mean `temperature`"):
        parse_config({"attack": {"kind": "chameleon", "fraction": 0.1, "params": {"temprature": 0.1}}})


def test_the_lr_schedule_steps_before_each_epoch_as_the_authors():
    """MultiStepLR.step() before epoch e (from 1) → lr·γ^#{milestones ≤ e}: with 3,5,7,9 and
    γ = 0.1, epochs 1-2 at lr, 3-4 at lr/10, 5-6 at lr/100, 7-8 at lr/1000, 9-10 at lr/10⁴."""
    got = [lr_at(0.005, [3, 5, 7, 9], 0.1, e) for e in range(1, 11)]
    want = [0.005] * 2 + [5e-4] * 2 + [5e-5] * 2 + [5e-6] * 2 + [5e-7] * 2
    assert got == pytest.approx(want, rel=1e-12)
    assert [lr_at(0.001, [3, 5], 0.005, e) for e in (1, 2, 3)] == pytest.approx([1e-3, 1e-3, 5e-6], rel=1e-12)


# -- the supervised-contrastive loss: golden cases -------------------------------------------


def f64(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def test_supcon_golden_four_embeddings_with_t_one_over_ln2():
    """T = 1/ln 2 makes exp(z_i·z_j/T) = 2^(z_i·z_j). Unit vectors z0 = (1,0), z1 = (0,1),
    z2 = (1,0), z3 = (−1,0); labels 1, 1, 7, 7; target 1 with weight w.
      anchor 0: others 2^0, 2^1, 2^-1 → Σ 3.5; positive z1: log p = 0 − ln 3.5 → ℓ0 = w·ln 3.5
      anchor 1: others 2^0 ×3 → Σ 3; positive z0: log p = −ln 3 → ℓ1 = w·ln 3
      anchor 2: others 2, 1, ½ → Σ 3.5; positive z3 (dot −1): −ln 2 − ln 3.5 = −ln 7 → ℓ2 = ln 7
      anchor 3: others ½, 1, ½ → Σ 2; positive z2 (dot −1): −ln 2 − ln 2 → ℓ3 = ln 4
    loss = (w·ln 10.5 + ln 28)/4: w = 1 gives ln(294)/4, w = 6 the authors' weighting."""
    z = f64([[1, 0], [0, 1], [1, 0], [-1, 0]])
    y = torch.tensor([1, 1, 7, 7])
    t = 1 / math.log(2)
    assert abs(float(supcon_loss(z, y, t)) - math.log(294) / 4) < TOL64
    assert abs(float(supcon_loss(z, y, t, target=1, target_weight=1.0)) - math.log(294) / 4) < TOL64
    assert abs(float(supcon_loss(z, y, t, target=1, target_weight=6.0))
               - (6 * math.log(10.5) + math.log(28)) / 4) < TOL64
    # target 7 instead: the weight moves to anchors 2 and 3
    assert abs(float(supcon_loss(z, y, t, target=7, target_weight=6.0))
               - (math.log(10.5) + 6 * math.log(28)) / 4) < TOL64


def test_supcon_golden_an_anchor_without_positive_adds_zero_but_counts():
    """Same z, labels 1, 1, 7, 3: anchors 2 and 3 have no positive, add 0 (the textbook loss
    is NaN there) and still count in the mean over B = 4: loss = (ln 3.5 + ln 3)/4."""
    z = f64([[1, 0], [0, 1], [1, 0], [-1, 0]])
    got = float(supcon_loss(z, torch.tensor([1, 1, 7, 3]), 1 / math.log(2)))
    assert abs(got - math.log(10.5) / 4) < TOL64


def test_supcon_golden_at_the_authors_temperature():
    """T = 0.07, z0 = z1 = (1,0), z2 = z3 = (0,1), labels 0, 0, 1, 1: every anchor has its twin
    at dot 1 and two others at dot 0, so ℓ_i = −(1/T − ln(e^{1/T} + 2)) = ln(1 + 2e^{−1/T})."""
    z = f64([[1, 0], [1, 0], [0, 1], [0, 1]])
    want = math.log1p(2 * math.exp(-1 / 0.07))
    got = float(supcon_loss(z, torch.tensor([0, 0, 1, 1]), 0.07))
    # the value is ≈ 1.25e-6 from ln(1 + ε): compare relatively (float64 keeps ~1e-10 of it
    # through the log-sum-exp, whose terms are of order 1/T ≈ 14)
    assert abs(got - want) <= 1e-9 * want


# -- cross-check: the authors' SupConLoss, transcribed to numpy ------------------------------


def authors_supcon(features, labels, fac_label, scale_weight, down_scale_weight, poison_per_batch,
                   poison_images_len, temperature=0.07, base_temperature=0.07):
    """numpy transcription of SupConLoss.forward (labels given, contrast_mode 'all') of
    ybdai7/Chameleon-durable-backdoor utils/losses.py at 83e8f13d679b6296decec8558c78ab56e1503e24,
    step by step (its label 1 in the cross-feature mask is hard-coded there too)."""
    batch_size = features.shape[0]
    labels = labels.reshape(-1, 1)
    mask = (labels == labels.T).astype(np.float64)
    mask_scale = mask.copy()
    mask_cross_feature = np.ones_like(mask_scale)
    label_flatten = labels.reshape(-1)
    for ind, label in enumerate(labels.reshape(-1)):
        if label == fac_label:
            mask_scale[ind, :] = mask[ind, :] * scale_weight
        if ind < poison_per_batch * poison_images_len:
            label_1_row = (label_flatten == 1) * down_scale_weight + (label_flatten != 1)
            mask_cross_feature[ind, :] = mask_cross_feature[ind, :] * label_1_row
        if label == 1:
            n = poison_per_batch * poison_images_len
            mask_cross_feature[ind, 0:n] = mask_cross_feature[ind, 0:n] * down_scale_weight
    anchor_dot_contrast = (features @ features.T) / temperature * mask_cross_feature
    logits = anchor_dot_contrast - anchor_dot_contrast.max(axis=1, keepdims=True)
    logits_mask = 1.0 - np.eye(batch_size)
    mask = mask * logits_mask
    mask_scale = mask_scale * logits_mask
    exp_logits = np.exp(logits) * logits_mask
    log_prob = logits - np.log(exp_logits.sum(1, keepdims=True))
    mean_log_prob_pos_mask = (mask_scale * log_prob).sum(1)
    mask_check = mask.sum(1)
    for ind, mask_item in enumerate(mask_check):
        if mask_item != 0:
            mask_check[ind] = 1 / mask_item
    loss = -(temperature / base_temperature) * (mean_log_prob_pos_mask * mask_check)
    return loss.mean()


@pytest.mark.parametrize("weight,target", [(6.0, 1), (1.0, 1), (6.0, 2)])
def test_supcon_agrees_with_the_authors_transcription(weight, target):
    """16 random unit vectors in R^8 (numpy seed 0), labels from {1, 2, 7} with the 7
    poisoned rows first labelled 1 (their layout), some label-2 singletons among them;
    down_scale_weight 1 (every yaml), where the cross-feature mask is all ones."""
    rng = np.random.default_rng(0)
    z = rng.normal(size=(16, 8))
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    y = np.array([1] * 7 + [7, 7, 1, 2, 7, 1, 1, 7, 7])
    want = authors_supcon(z, y, target, weight, 1.0, 1, 7)
    got = float(supcon_loss(torch.from_numpy(z), torch.from_numpy(y), 0.07, target, weight))
    # logits of order 1/T ≈ 14 and 16 terms per row: float64 keeps ~1e-13 absolute
    assert abs(got - want) < TOL64 * max(1.0, abs(want))


# -- the two phases on the real CNN ------------------------------------------------------------


def cnn(seed: int = 0) -> CNN:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return CNN()


def batch(seed: int, n: int, labels=None) -> ClientData:
    g = torch.Generator().manual_seed(seed)
    px = torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 10, (n,), generator=g) if labels is None else torch.full((n,), labels)
    return ClientData(px, y)


OWN, MAL = batch(1, 12), batch(2, 4, labels=1)
HP = SGDParams(1, 8, 0.1)
FAST = ChameleonParams(encoder_epochs=2, head_epochs=2, head_lr=0.05, head_milestones=[5])


def gen(seed: int = 7) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def task(radius=None, boost=1.0) -> ClientTask:
    return ClientTask(0, 3, 0, "attacker", 11, boost=boost, radius=radius)


def w_t_of(model):
    return [q.detach().clone() for q in model.parameters()]


def test_the_encoder_output_is_the_cnn_without_its_last_layer():
    """The hook's features equal relu(fc1(…)) computed by hand (eval: no dropout), bit for bit."""
    import torch.nn.functional as F

    m = cnn().eval()
    assert head_module(m) is m.fc2
    x = to_input(OWN.pixels)
    with torch.no_grad(), penultimate(m) as store:
        m(x)
        by_hand = F.relu(m.fc1(torch.flatten(F.max_pool2d(F.relu(m.conv2(F.relu(m.conv1(x)))), 2), 1)))
    assert torch.equal(store["z"], by_hand)


def test_the_encoder_phase_leaves_the_head_at_w_t():
    m = cnn()
    w_t = w_t_of(m)
    with client_rng_scope(11):
        Chameleon(FAST, 1).train_encoder(m, w_t, OWN, MAL, HP, gen(), None)
    assert torch.equal(m.fc2.weight, w_t[-2]) and torch.equal(m.fc2.bias, w_t[-1])
    assert not torch.equal(m.conv1.weight, w_t[0])


def test_the_head_phase_freezes_the_encoder_bit_for_bit():
    """(BackFed's `require_grad` typo leaves its encoder trainable: this would fail there.)"""
    m = cnn()
    w_t = w_t_of(m)
    before = [q.detach().clone() for q in m.parameters()]
    with client_rng_scope(11):
        Chameleon(FAST, 1).train_head(m, w_t, OWN, MAL, HP, gen(), None)
    params = list(m.parameters())
    assert all(torch.equal(q, b) for q, b in zip(params[:-2], before[:-2]))  # conv1, conv2, fc1
    assert not torch.equal(m.fc2.weight, before[-2])
    assert all(q.requires_grad for q in params)  # restored for the runner's next client


@pytest.mark.parametrize("radius", [1e-3, 0.2])
def test_under_clipping_the_update_stays_in_the_pgd_ball(radius):
    """‖sent‖ = β‖w − w_t‖ ≤ β·(M/β) = M; the float32 difference after the float64 rescale can
    exceed by a few ulps (1e-5 relative bounds it). With a tiny radius the encoder uses all of
    it and the head gets none (its radius is √(r² − ‖Δ_encoder‖²))."""
    m = cnn()
    w = get_flat(m).clone()
    with client_rng_scope(11):
        sent, metrics = Chameleon(FAST, 1).craft(task(radius, boost=4.0), m, w, OWN, MAL, HP, gen())
    assert float(sent.norm()) <= 4.0 * radius * (1 + 1e-5)
    assert 0.0 <= metrics["head_radius"] <= radius
    if radius == 1e-3:
        assert metrics["head_radius"] < 1e-3 * radius


def test_without_clipping_the_update_is_boosted_model_replacement():
    m1, m2 = cnn(), cnn()
    w = get_flat(m1).clone()
    with client_rng_scope(11):
        a, _ = Chameleon(FAST, 1).craft(task(None, 1.0), m1, w, OWN, MAL, HP, gen())
    with client_rng_scope(11):
        b, metrics = Chameleon(FAST, 1).craft(task(None, 3.0), m2, w, OWN, MAL, HP, gen())
    assert torch.equal(b, 3.0 * a) and "head_radius" not in metrics


def test_same_generator_same_bits_other_seed_other_update():
    def run(seed):
        m = cnn()
        with client_rng_scope(11):
            return Chameleon(FAST, 1).craft(task(0.5, 2.0), m, get_flat(m).clone(), OWN, MAL, HP, gen(seed))[0]

    assert torch.equal(run(7), run(7))
    assert not torch.equal(run(7), run(8))


# -- end to end --------------------------------------------------------------------------------


def sim_config(backdoor: str, bound: float | None):
    """K = 12 synthetic writers, 5 per round, 2 attackers every round, 2 rounds."""
    return parse_config({
        "seed": 4, "data": {"source": "synthetic", "num_writers": 12, "examples_per_writer": 8},
        "fl": {"rounds": 2, "clients_per_round": 5, "local_epochs": 1, "batch_size": 8, "device": "cpu",
               "eval_every": 1},
        "attack": {"kind": "chameleon", "fraction": 0.4, "schedule": "every-round", "num_tasks": 2, "max_tasks": 2,
                   "backdoor": backdoor, "params": {"encoder_epochs": 2, "head_epochs": 2}},
        "defense": {} if bound is None else {"norm_bound": bound},
    })


@pytest.fixture(scope="module")
def synthetic():
    return load_data(sim_config("semantic", None).data, 4)


@pytest.mark.parametrize("backdoor,bound", [("semantic", None), ("semantic", 2.0), ("trigger", None),
                                            ("trigger", 2.0)])
def test_a_simulation_runs_under_both_backdoor_tasks(backdoor, bound, synthetic):
    sim = Simulation(sim_config(backdoor, bound), data=synthetic)
    history = sim.run()
    assert [m["num_attackers"] for m in history] == [2, 2]
    assert bool(torch.isfinite(sim.state.global_params).all())
    assert all(m["backdoor_acc"] is not None and m["main_acc"] is not None for m in history)
    if bound is not None:  # projected onto M/β: clipping at M leaves it intact
        assert all(m["attacker_norm_pre"] <= bound * (1 + 1e-5) for m in history)
    again = Simulation(sim_config(backdoor, bound), data=synthetic)
    again.run()
    assert torch.equal(sim.state.global_params, again.state.global_params)
