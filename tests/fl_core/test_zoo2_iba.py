"""IBA (`fl_core/attacks/iba.py`): golden cases of its defining step (the poisoned image
x + ε·G(x) clamped and quantised; the generator's SGD steps; the gradient mask; ε's decay),
the PGD bound of its update, its state in checkpoints (resume bit-exact), determinism, a tiny
end-to-end run on synthetic data, and config errors.

Tolerances: float32 throughout; where a result is compared with a hand-rolled float32
computation of the same operations in the same order, the comparison is exact (torch.equal);
where a value passes through tanh (float32, error ≤ 1 ulp ≈ 6e-8 at 0.5) the quantised pixel
is chosen 0.25 grey level away from a rounding boundary, so the assert is exact anyway.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fl_core.attacks import ATTACKS
from fl_core.attacks.base import TriggerContext, learned_trigger
from fl_core.attacks.iba import IBA, INIT_KEY, IBAParams, make_generator, poison, quantise, seeded_init
from fl_core.build import make_attack
from fl_core.config import parse_config
from fl_core.data import load_data
from fl_core.errors import ConfigError
from fl_core.models import CNN
from fl_core.params import get_flat, set_flat
from fl_core.rng import Stream, torch_generator
from fl_core.simulate import Simulation
from fl_core.state import load_state, save_state
from fl_core.training import ClientData, SGDParams, to_input
from fl_core.types import ClientTask


def cfg(rounds=3, defense=None, **params):
    return parse_config({
        "seed": 5, "data": {"source": "synthetic", "num_writers": 12, "examples_per_writer": 8},
        "fl": {"rounds": rounds, "clients_per_round": 5, "local_epochs": 1, "batch_size": 8, "device": "cpu",
               "eval_every": 1, "checkpoint_every": 1},
        "attack": {"kind": "iba", "backdoor": "trigger", "fraction": 0.4, "schedule": "every-round",
                   "start_round": 1, "params": {"atk_epochs": 1, **params}},
        "defense": defense if defense is not None else {"norm_bound": 3.0},
    })


@pytest.fixture(scope="module")
def data():
    return load_data(cfg().data, 5)


def attack(**params) -> IBA:
    return make_attack(cfg(**params))


def images(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=g)


def constant_state(atk: IBA, g_value: float, eps: float = 0.3) -> dict:
    """A generator whose output is the constant tanh(atanh(g_value)) ≈ g_value: every conv
    weight and bias 0, so the last BatchNorm (eval mode, running mean 0, variance 1) outputs
    its bias β = atanh(g_value) whatever the input."""
    g = seeded_init(make_generator(), torch_generator(5, Stream.TRIGGER, *INIT_KEY))
    with torch.no_grad():
        for m in g.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                m.weight.zero_(), m.bias.zero_()
        g[1][7].bias.fill_(math.atanh(g_value))
    return {**{f"generator.{k}": v.clone() for k, v in g.state_dict().items()}, "eps": torch.tensor(eps, dtype=torch.float64)}


# -- the poisoned image -------------------------------------------------------------------


def test_poison_clamps_and_quantise_rounds_on_a_fixed_generator():
    """x = u/255; G(x) a fixed map; x̃ = clamp(x + ε·G(x), 0, 1); pixel round(255·x̃).
    u = [0, 51, 255, 204], ε = 0.5, G = [0.1, −1, 1, −0.5] →
    x + εG = [0.05, 0.2 − 0.5 → 0, 1 + 0.5 → 1, 0.8 − 0.25 = 0.55] → 255·[...] = [12.75, 0, 255, 140.25]
    → [13, 0, 255, 140]."""
    u = torch.tensor([0, 51, 255, 204], dtype=torch.uint8).view(1, 2, 2)
    pattern = torch.tensor([0.1, -1.0, 1.0, -0.5]).view(1, 1, 2, 2)
    x = to_input(u)
    out = poison(x, lambda z: pattern.expand_as(z), 0.5)
    assert torch.allclose(out.flatten(), torch.tensor([0.05, 0.0, 1.0, 0.55]), atol=1e-7, rtol=0)
    assert quantise(out).flatten().tolist() == [13, 0, 255, 140]
    assert quantise(out).dtype == torch.uint8 and quantise(out).shape == (1, 2, 2)


@pytest.mark.parametrize("g_value,expected", [
    (0.5, [13, 113, 255, 141]),    # +12.75: 0→12.75, 100→112.75, 250→262.75 (clamped), 128→140.75
    (-0.5, [0, 87, 237, 115]),     # −12.75: 0→−12.75 (clamped), 100→87.25, 250→237.25, 128→115.25
])
def test_stamp_is_the_quantised_poisoned_image_of_its_state(g_value, expected):
    """`stamp` through the real generator with a constant output ≈ ±0.5 and ε = 0.1 (eval_eps)."""
    atk = attack(eval_eps=0.1)
    px = torch.tensor([0, 100, 250, 128], dtype=torch.uint8).view(4, 1, 1).expand(4, 28, 28).contiguous()
    out = atk.stamp(px, constant_state(atk, g_value))
    assert out.dtype == torch.uint8 and out.shape == px.shape
    assert out[:, 5, 5].tolist() == expected and bool((out == out[:, :1, :1]).all())
    assert torch.equal(px, px.clone())  # the input is not modified


def test_stamp_eps_is_the_last_training_eps_unless_eval_eps_is_set():
    """G ≈ +0.5 everywhere, pixel 10. eval_eps null: the ε_t `learn` stored (0.22):
    10 + 0.22·0.5·255 = 38.05 → 38; eval_eps 0.1: 10 + 12.75 = 22.75 → 23; `{}`: atk_eps."""
    px = torch.full((1, 28, 28), 10, dtype=torch.uint8)
    a = attack()
    state = constant_state(a, 0.5, eps=0.22)
    assert a.stamp_eps(state) == pytest.approx(0.22) and a.stamp_eps({}) == 0.3
    assert int(a.stamp(px, state)[0, 0, 0]) == 38
    assert int(attack(eval_eps=0.1).stamp(px, state)[0, 0, 0]) == 23


def test_the_initial_generator_is_a_seeded_draw_and_touches_no_global_rng():
    a, b = attack(), make_attack(cfg().model_copy(update={"seed": 6}))
    before = torch.get_rng_state()
    s1, s2 = a.generator({}, "cpu").state_dict(), a.generator({}, "cpu").state_dict()
    assert torch.equal(torch.get_rng_state(), before)
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    other = b.generator({}, "cpu").state_dict()
    assert not torch.equal(s1["0.0.weight"], other["0.0.weight"])  # another seed, another G
    # default-init bounds: conv1 has fan_in 1·3·3 = 9, so |w|, |b| ≤ 1/3
    assert float(s1["0.0.weight"].abs().max()) <= 1 / 3 and float(s1["0.0.bias"].abs().max()) <= 1 / 3
    assert s1["0.0.weight"].std() > 0.05
    # the evaluator's stamp with {} uses that generator at atk_eps
    px = images()
    g = a.generator({}, "cpu").eval()
    with torch.no_grad():
        assert torch.equal(a.stamp(px, {}), quantise(poison(to_input(px), g, 0.3)))


# -- ε's decay ----------------------------------------------------------------------------


def test_eps_decays_from_the_start_round_to_its_floor():
    """atk_eps 0.4, eps_decay 0.5, floor 0.06, start_round 1: rounds 0..4 →
    0.4 (before the start: s = 0), 0.4, 0.2, 0.1, max(0.06, 0.05) = 0.06. Powers of 2: exact."""
    a = attack(atk_eps=0.4, eps_decay=0.5, atk_test_eps=0.06)
    assert [a.eps_at(t) for t in range(5)] == [0.4, 0.4, 0.2, 0.1, 0.06]


# -- the generator's update (learn) ------------------------------------------------------


def test_learn_takes_the_hand_rolled_momentum_sgd_steps_on_the_frozen_global_model():
    """Two minibatches (6 images, batch 3 forced by fl.batch_size), one epoch: the generator's
    weights after `learn` equal two hand-rolled steps of SGD with momentum μ and weight decay λ:
    d_i = ∇L_i + λ w_{i−1}; b_1 = d_1, b_2 = μ b_1 + d_2; w_i = w_{i−1} − lr·b_i, with
    L_i = CE(f_w(clamp(x + ε·G(x), 0, 1)), target) over batch i of the seeded order, G in train
    mode (its BatchNorm's running statistics move too), f_w in eval mode and untouched."""
    c = cfg(atk_lr=0.01, atk_momentum=0.9, atk_weight_decay=0.01)
    c = c.model_copy(update={"fl": c.fl.model_copy(update={"batch_size": 3})})
    a = make_attack(c)
    torch.manual_seed(0)
    w = get_flat(CNN())
    px = images(6)
    ctx = TriggerContext(5, 2, (1, 4), ClientData(px, torch.zeros(6, dtype=torch.long)), w, torch.device("cpu"), c)
    new, metrics = a.learn(ctx, {}, torch_generator(5, Stream.TRIGGER, 2))

    g = a.generator({}, "cpu").train()
    clf = CNN()
    set_flat(clf, w)
    clf.eval()
    eps = a.eps_at(2)
    perm = torch.randperm(6, generator=torch_generator(5, Stream.TRIGGER, 2))
    params = list(g.parameters())
    bufs = None
    for b in range(2):
        x = to_input(px[perm[3 * b : 3 * b + 3]])
        loss = F.cross_entropy(clf(torch.clamp(x + eps * g(x), 0, 1)), torch.full((3,), c.attack.target_label))
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            d = [gr + 0.01 * p for gr, p in zip(grads, params)]
            bufs = d if bufs is None else [0.9 * bu + di for bu, di in zip(bufs, d)]
            for p, bu in zip(params, bufs):
                p.sub_(0.01 * bu)
    for k, v in g.state_dict().items():
        # same float32 operations, same order: agreement to a few ulps of the weights (torch's
        # optimiser fuses lr·buf differently, 1 ulp of |w| ≤ 1 is 1.2e-7)
        assert torch.allclose(new[f"generator.{k}"], v, rtol=0, atol=1e-6), k
    assert int(new["generator.0.1.num_batches_tracked"]) == 2
    assert float(new["eps"]) == pytest.approx(eps) and metrics["iba_eps"] == eps
    assert torch.equal(get_flat(clf), w)
    assert set(metrics) == {"iba_generator_loss", "iba_local_asr", "iba_eps"}
    assert all(v.device.type == "cpu" for v in new.values())


def test_learn_subsamples_and_never_modifies_its_inputs():
    c = cfg(atk_max_images=4)
    a = make_attack(c)
    w = get_flat(CNN())
    px = images(10)
    ctx = TriggerContext(5, 1, (0,), ClientData(px.clone(), torch.zeros(10, dtype=torch.long)), w.clone(),
                         torch.device("cpu"), c)
    state = constant_state(a, 0.5)
    frozen = {k: v.clone() for k, v in state.items()}
    new, _ = a.learn(ctx, state, torch_generator(5, Stream.TRIGGER, 1))
    assert all(torch.equal(state[k], frozen[k]) for k in state)
    assert torch.equal(ctx.data.pixels, px) and torch.equal(ctx.global_params, w)
    assert int(new["generator.0.1.num_batches_tracked"]) == 1  # 4 images: one batch of 8
    assert set(new) == set(state)


def test_learn_runs_at_the_configs_thread_count(monkeypatch):
    """The simulation calls `learn` outside any thread scope; CPU reductions' bits depend on
    the thread count, so learn sets fl.threads (1 here) itself and restores the caller's."""
    a = attack()
    seen = []
    inner = IBA._learn
    monkeypatch.setattr(IBA, "_learn", lambda self, *args: seen.append(torch.get_num_threads()) or inner(self, *args))
    ctx = TriggerContext(5, 1, (0,), ClientData(images(4), torch.zeros(4, dtype=torch.long)), get_flat(CNN()),
                         torch.device("cpu"), cfg())
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        a.learn(ctx, {}, torch_generator(5, Stream.TRIGGER, 1))
        assert seen == [cfg().fl.threads] == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(old)


# -- the attacker's update (craft) --------------------------------------------------------


def own_data(n=12):
    return ClientData(images(n, seed=3), torch.arange(n) % 10)


def run_craft(a, radius=None, boost=1.0, seed=1, state=None, epochs=2):
    torch.manual_seed(0)
    model = CNN()
    w = get_flat(model)
    task = ClientTask(2, 3, 0, "attacker", 7, boost=boost, radius=radius, attack_state=state)
    own = own_data()
    d, m = a.craft(task, model, w, own, own, SGDParams(epochs, 4, 0.1), torch.Generator().manual_seed(seed))
    return d, m, w


def test_craft_respects_the_pgd_radius_under_clipping():
    """radius M/β = 0.05, β = 4: ‖Δ‖ ≤ β·0.05 = 0.2 (to float32 rounding of the projection,
    relative 1e-6), and the projection binds (unprojected training moves > 10× further; the
    last step may end just inside the ball, so ‖Δ‖ is near, not at, 0.2)."""
    a = attack()
    free, _, _ = run_craft(a)
    assert float(free.norm()) > 0.5
    d, m, _ = run_craft(a, radius=0.05, boost=4.0)
    assert float(d.norm()) > 0.19
    assert float(d.double().norm()) <= 0.2 * (1 + 1e-6)
    assert set(m) == {"train_loss", "poison_loss"}


def test_craft_without_clipping_sends_the_boosted_difference():
    a = attack()
    d1, _, _ = run_craft(a, boost=1.0)
    d3, _, _ = run_craft(a, boost=3.0)
    assert torch.equal(d3, 3.0 * d1)


def test_craft_is_the_alpha_mix_of_clean_and_stamped_batches_at_the_rounds_eps():
    """One epoch, batches of 4 in the task generator's order: each step is plain SGD on
    α·CE(f(x), y) + (1 − α)·CE(f(x̃), target), x̃ = `stamp_with` at ε_t of the task's round
    (eps_decay 0.5, start 1: ε_2 = 0.15, not atk_eps), no radius: Δ = w − w_t (β = 1). The
    hand-rolled loop uses the same float32 operations in the same order, and the same dropout
    draws (the global RNG from the same seed, inside a scope): exact."""
    from fl_core.rng import client_rng_scope

    a = attack(eps_decay=0.5, attack_alpha=0.25)
    state = constant_state(a, 0.5)
    own = own_data()
    stamped = a.stamp_with(own.pixels, state, 0.15)
    assert not torch.equal(stamped, a.stamp_with(own.pixels, state, 0.3))
    with client_rng_scope(11):
        d, _, w = run_craft(a, state=state, epochs=1)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(1))
    with client_rng_scope(11):
        torch.manual_seed(0)  # as run_craft: the CNN's init, then its dropout draws, from seed 0
        model = CNN()
        model.train()
        for s in range(0, 12, 4):
            idx = perm[s : s + 4]
            model.zero_grad(set_to_none=True)
            lc = F.cross_entropy(model(to_input(own.pixels[idx])), own.labels[idx])
            lp = F.cross_entropy(model(to_input(stamped[idx])), torch.full((4,), a.target))
            (0.25 * lc + 0.75 * lp).backward()
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(p.grad, alpha=-0.1)
    assert torch.equal(d, get_flat(model) - w)


def test_craft_with_mask_leaves_the_frozen_coordinates_at_zero():
    """mask_ratio 0.3: the update is exactly 0 outside the kept 30% (masked gradients; the
    projection only rescales), and the kept share is int(0.3·d)/d."""
    a = attack(mask_ratio=0.3)
    d, m, w = run_craft(a, radius=0.05, boost=2.0)
    torch.manual_seed(0)
    model = CNN()
    mask = a.grad_mask(model, w, own_data())
    assert int(mask.sum()) == int(mask.numel() * 0.3)
    assert bool((d[mask == 0] == 0).all()) and bool((d[mask == 1] != 0).any())
    assert m["frozen_share"] == pytest.approx(1 - int(mask.numel() * 0.3) / mask.numel())


def test_grad_mask_keeps_the_smallest_abs_gradient_coordinates():
    """A probe whose logits are a bias b whatever the input: the CE gradient over labels y
    is softmax(b) − freq(y). b = 0, y = [0, 0, 1, 2]: ∇b = 1/3 − [1/2, 1/4, 1/4] =
    [−1/6, 1/12, 1/12]. ratio 0.67 → int(3·0.67) = 2 smallest |∇|: indices 1 and 2; ratio 0.34
    → 1: the tie between 1 and 2 goes to the lower index."""

    class Bias(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.b = torch.nn.Parameter(torch.zeros(3))

        def forward(self, x):
            return self.b.expand(len(x), 3)

    a = attack(mask_ratio=0.67)
    own = ClientData(images(4), torch.tensor([0, 0, 1, 2]))
    mask = a.grad_mask(Bias(), torch.zeros(3), own)
    assert mask.tolist() == [0.0, 1.0, 1.0]
    a = attack(mask_ratio=0.34)
    assert a.grad_mask(Bias(), torch.zeros(3), own).tolist() == [0.0, 1.0, 0.0]


def test_the_honest_control_sends_the_honest_update():
    """honest_control: craft is the benign client's local_train (same generator, same order),
    whatever G and the round's radius and boost."""
    from fl_core.training import local_train

    a = attack(honest_control=True)
    d, m, w = run_craft(a, radius=0.05, boost=4.0, state=constant_state(a, 0.5))
    torch.manual_seed(0)
    ref, rm = local_train(CNN(), w, own_data(), SGDParams(2, 4, 0.1), torch.Generator().manual_seed(1))
    assert torch.equal(d, ref) and m == rm
    assert not torch.equal(d, run_craft(attack(), radius=0.05, boost=4.0, state=constant_state(a, 0.5))[0])


# -- through the simulation ---------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(data):
    """Two independent 3-round runs of the same config (rounds 1, 2 attacked)."""
    out = []
    for _ in range(2):
        sim = Simulation(cfg(), data=data)
        out.append((sim, sim.run()))
    return out


def test_end_to_end_learns_each_attacked_round_and_measures_with_its_stamp(runs):
    sim, history = runs[0]
    assert learned_trigger(sim.attack) is sim.attack
    assert [m.get("iba_eps") for m in history] == [None, 0.3, pytest.approx(0.3 * 0.999)]
    assert all(0.0 <= m["backdoor_acc"] <= 1.0 for m in history)
    st = sim.state.attack_state
    assert "eps" in st and sum(k.startswith("generator.") for k in st) == len(make_generator().state_dict())
    # backdoor_acc is the share of the stamped clean-label test images the global model calls
    # the target: recompute it from stamp's uint8 output (what the model sees, via to_input)
    ev = sim.evaluator
    stamped = sim.attack.stamp(ev.test_x[ev.clean_mask], st)
    assert stamped.dtype == torch.uint8
    model = CNN()
    set_flat(model, sim.state.global_params)
    model.eval()
    with torch.no_grad():
        rate = float((model(to_input(stamped)).argmax(1) == ev.target).double().mean())
    assert history[-1]["backdoor_acc"] == rate


def test_resume_from_a_checkpoint_is_bit_exact(tmp_path, data, runs):
    """Rounds 0 (benign), 1 (first learnt G), save, load, round 2 (learns from the loaded G)."""
    whole, expected = runs[0]
    half = Simulation(cfg(), data=data)
    half.step(), half.step()
    save_state(tmp_path / "s.pt", half.state)
    loaded = load_state(tmp_path / "s.pt", cfg())
    assert set(loaded.attack_state) == set(half.state.attack_state)
    assert all(torch.equal(loaded.attack_state[k], v) and loaded.attack_state[k].dtype == v.dtype
               for k, v in half.state.attack_state.items())
    rest = Simulation(cfg(), data=data, state=loaded)
    got = [rest.step()]
    keep = ("main_acc", "backdoor_acc", "main_loss", "iba_generator_loss", "iba_local_asr", "iba_eps")
    assert [{k: m.get(k) for k in keep} for m in got] == [{k: m.get(k) for k in keep} for m in expected[2:]]
    assert torch.equal(rest.state.global_params, whole.state.global_params)
    assert all(torch.equal(rest.state.attack_state[k], v) for k, v in whole.state.attack_state.items())


def test_two_runs_are_identical(runs):
    """(The seed's effect on G: test_the_initial_generator_is_a_seeded_draw_….)"""
    (a, ha), (b, hb) = runs
    strip = lambda h: [{k: v for k, v in m.items() if not k.endswith("_seconds")} for m in h]  # noqa: E731
    assert strip(ha) == strip(hb)
    assert torch.equal(a.state.global_params, b.state.global_params)
    assert all(torch.equal(a.state.attack_state[k], v) for k, v in b.state.attack_state.items())


# -- configuration ------------------------------------------------------------------------


def test_registered_with_the_authors_defaults():
    spec = ATTACKS["iba"]
    assert spec.backdoor == "trigger" and spec.label == "IBA"
    p = parse_config({"attack": {"kind": "iba", "fraction": 0.1}}).attack.params
    assert p == IBAParams().model_dump()
    assert (p["atk_eps"], p["atk_test_eps"], p["atk_lr"], p["atk_epochs"], p["attack_alpha"]) == (0.3, 0.05, 0.001, 3, 0.5)
    assert p["mask_ratio"] is None and p["eval_eps"] is None and p["eps_decay"] == 0.001


@pytest.mark.parametrize("params,match", [
    ({"atk_test_eps": 0.5}, r"attack.params.*atk_test_eps"),
    ({"atk_eps": 0.0}, r"attack.params.atk_eps"),
    ({"mask_ratio": 1.0}, r"attack.params.mask_ratio"),
    ({"attack_alpha": 1.0}, r"attack.params.attack_alpha"),
    ({"atk_epoch": 2}, r"attack.params.atk_epoch.*did you mean `atk_epochs`"),
])
def test_bad_params_are_config_errors(params, match):
    with pytest.raises(ConfigError, match=match):
        parse_config({"attack": {"kind": "iba", "fraction": 0.1, "params": params}})


def test_iba_needs_the_trigger_task():
    with pytest.raises(ConfigError, match=r"attack.backdoor"):
        parse_config({"attack": {"kind": "iba", "fraction": 0.1, "backdoor": "semantic"}})
