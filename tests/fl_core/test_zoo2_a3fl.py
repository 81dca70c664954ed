"""A3FL (`fl_core/attacks/a3fl.py`): golden cases of its defining step (one signed trigger
step, with and without the adversarial model's term; the conv-gradient cosine w; the uint8
stamp), its learned state through a checkpoint, the PGD radius of its update, determinism, a
tiny end-to-end run and config errors.

Golden steps use a linear model on the flattened image (2 classes, target 1): for CE with
target 1, ∂L/∂x_j = p_0·(W[0, j] − W[1, j]), so with W[0] = 0 the sign of the trigger's
gradient at a patch pixel is −sign(W[1, j]) whatever p_0 > 0 is, and the step is exact.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fl_core.attacks import ATTACKS
from fl_core.attacks.a3fl import A3FL, A3FLParams, conv_cosine, paste, quantise
from fl_core.attacks.base import TriggerContext
from fl_core.config import parse_config
from fl_core.data import load_data
from fl_core.errors import ConfigError
from fl_core.models import CNN
from fl_core.params import get_flat
from fl_core.rng import Stream, client_rng_scope, torch_generator
from fl_core.simulate import Simulation
from fl_core.state import load_state, save_state
from fl_core.training import ClientData, SGDParams, to_input
from fl_core.types import ClientTask

CHEAP = {"trigger_epochs": 2, "adv_epochs": 1, "adv_every": 1, "pgd_iterations": 2}


def linear(w1: torch.Tensor) -> torch.nn.Module:
    """Flatten → Linear(784, 2) with W[0] = 0, W[1] = w1 (784), no bias."""
    lin = torch.nn.Linear(28 * 28, 2, bias=False)
    with torch.no_grad():
        lin.weight.zero_()
        lin.weight[1] = w1
    return torch.nn.Sequential(torch.nn.Flatten(), lin)


def patch_weights(p: A3FLParams, values: list[float]) -> torch.Tensor:
    """784 weights: `values` (row-major over the patch) on the patch pixels, 0 elsewhere."""
    w = torch.zeros(28, 28)
    w[p.row : p.row + p.size, p.col : p.col + p.size] = torch.tensor(values).view(p.size, p.size)
    return w.view(-1)


# 25 patch weights summing to 0: +1 ×8, −1 ×8, 0 ×9 (so a uniform patch gives logit 0: p_0 = ½)
PATTERN = [1.0] * 8 + [-1.0] * 8 + [0.0] * 9


def test_one_signed_step_moves_each_patch_pixel_against_its_gradient_sign():
    p = A3FLParams(trigger_lr=0.25)
    atk = A3FL(p, target=1, batch_size=4)
    model = linear(patch_weights(p, PATTERN))
    x = torch.zeros(3, 1, 28, 28)
    start = torch.full((5, 5), 0.5)
    new, loss, grads = atk.trigger_step(start, x, model)
    # ∂L/∂δ_j = −p_0·W1_j: W1 = +1 → δ + α = 0.75; −1 → δ − α = 0.25; 0 → sign 0, unchanged
    expected = torch.tensor([0.75] * 8 + [0.25] * 8 + [0.5] * 9).view(5, 5)
    assert torch.equal(new, expected)
    assert loss == pytest.approx(0.6931471805599453, abs=1e-6)  # ln 2: logits (0, 0)
    assert grads == ()  # only conv parameters' gradients are kept (for w); this model has none
    # clipped to [0, 1]: from 0.9 a +0.25 step lands on 1, from 0.1 a −0.25 step on 0
    new, _, _ = atk.trigger_step(torch.tensor([0.9] * 8 + [0.1] * 17).view(5, 5), x, model)
    assert torch.equal(new.view(-1)[:16], torch.tensor([1.0] * 8 + [0.0] * 8))


@pytest.mark.parametrize("lam_w,flipped", [(1.0, True), (0.2, False)])
def test_the_adversarial_term_weighs_in_with_lambda_times_w(lam_w, flipped):
    """θ' with W1' = −3·W1 (also p'_0 = ½): ∂L/∂δ_j = ½(−W1_j + λw·3·W1_j), whose sign flips
    exactly when 3λw > 1."""
    p = A3FLParams(trigger_lr=0.25, lam=1.0)
    atk = A3FL(p, target=1, batch_size=4)
    model, adv = linear(patch_weights(p, PATTERN)), linear(-3 * patch_weights(p, PATTERN))
    new, _, _ = atk.trigger_step(torch.full((5, 5), 0.5), torch.zeros(2, 1, 28, 28), model, adv, w=lam_w)
    up, down = (0.25, 0.75) if flipped else (0.75, 0.25)
    assert torch.equal(new, torch.tensor([up] * 8 + [down] * 8 + [0.5] * 9).view(5, 5))


def test_w_is_the_mean_conv_gradient_cosine():
    """cos((1,0),(0,1)) = 0 and cos((1,1),(2,2)) = 1 on the two conv tensors; the fc tensor
    (cos −1) is not a conv layer: w = ½ (float64; the only rounding is in √2·√8, ≤ 1e-15)."""
    adv = {"conv1.weight": torch.tensor([1.0, 0.0], dtype=torch.float64),
           "conv2.bias": torch.tensor([1.0, 1.0], dtype=torch.float64),
           "fc1.weight": torch.tensor([1.0, 2.0], dtype=torch.float64)}
    glob = {"conv1.weight": torch.tensor([0.0, 1.0], dtype=torch.float64),
            "conv2.bias": torch.tensor([2.0, 2.0], dtype=torch.float64),
            "fc1.weight": torch.tensor([-1.0, -2.0], dtype=torch.float64)}
    assert conv_cosine(adv, glob) == pytest.approx(0.5, abs=1e-15)
    # the CNN's conv parameters are the ones the authors' name test picks
    assert [n for n, _ in CNN().named_parameters() if "conv" in n] == \
        ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"]


def test_stamp_quantises_the_patch_and_is_what_the_model_sees():
    p = A3FLParams(row=1, col=3, size=2)
    atk = A3FL(p, target=0, batch_size=4)
    trigger = torch.tensor([[0.0, 0.5], [1.0, 0.2]])
    # round(255·t): 0; 127.5 → 128 (half to even); 255; 51
    assert quantise(trigger).tolist() == [[0, 128], [255, 51]]
    px = torch.randint(0, 256, (3, 28, 28), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    before = px.clone()
    out = atk.stamp(px, {"trigger": trigger})
    assert torch.equal(px, before) and out.dtype == torch.uint8
    assert torch.equal(out[:, 1:3, 3:5], torch.tensor([[0, 128], [255, 51]], dtype=torch.uint8).expand(3, 2, 2))
    rest = torch.ones(28, 28, dtype=torch.bool)
    rest[1:3, 3:5] = False
    assert torch.equal(out[:, rest], px[:, rest])
    # the model's input of the stamped image is the float paste up to the quantisation (≤ 1/510)
    gap = (to_input(out) - paste(to_input(px), trigger, p)).abs().max()
    assert float(gap) <= 1 / 510 + 1e-7
    # {} is the initial trigger: a uniform 0.5 patch, 128 after rounding
    assert torch.equal(A3FL(A3FLParams(), 0, 4).stamp(px, {})[:, 2:7, 2:7], torch.full((3, 5, 5), 128, dtype=torch.uint8))


def cfg(rounds=3, attack=None, params=None, **fl):
    return parse_config({
        "seed": 3, "data": {"source": "synthetic", "num_writers": 10, "examples_per_writer": 8},
        "fl": {"rounds": rounds, "clients_per_round": 4, "local_epochs": 1, "batch_size": 4, "device": "cpu",
               "eval_every": 1, "checkpoint_every": 1, **fl},
        "attack": {"kind": "a3fl", "fraction": 0.5, "schedule": "every-round", "start_round": 1,
                   "params": {**CHEAP, **(params or {})}, **(attack or {})},
    })


@pytest.fixture(scope="module")
def data():
    return load_data(cfg().data, 3)


def context(config, data, round_idx=2):
    px, lb = zip(*(data.writer_train(k) for k in (0, 1)))
    d = ClientData(torch.from_numpy(np.concatenate(px)), torch.from_numpy(np.concatenate(lb)))
    torch.manual_seed(0)
    return TriggerContext(config.seed, round_idx, (0, 1), d, get_flat(CNN()), torch.device("cpu"), config)


def build(config):
    spec = ATTACKS["a3fl"]
    return spec.build(spec.params(**config.attack.params), config)


def test_learn_is_deterministic_and_keeps_its_input_state(data):
    c = cfg()
    atk, ctx = build(c), context(c, data)
    prior = {"trigger": torch.full((5, 5), 0.3)}
    a, ma = atk.learn(ctx, prior, torch_generator(3, Stream.TRIGGER, 2))
    b, mb = atk.learn(ctx, prior, torch_generator(3, Stream.TRIGGER, 2))
    assert torch.equal(a["trigger"], b["trigger"]) and ma == mb
    assert torch.equal(prior["trigger"], torch.full((5, 5), 0.3))  # never modified
    assert a["trigger"].device.type == "cpu" and a["trigger"].shape == (5, 5)
    assert not torch.equal(a["trigger"], prior["trigger"])  # it moved
    # each step moves a pixel by 0 or ±α from 0.3 (never near the clip): the trigger stays on the
    # α-grid, at most 2 passes × ⌈n/4⌉ steps away (float32 sums of 0.01: off by < 1e-3 steps)
    steps, most = (a["trigger"] - 0.3) / 0.01, 2 * -(-len(ctx.data) // 4)
    assert float((steps - steps.round()).abs().max()) < 1e-3 and float(steps.abs().max()) <= most + 1e-3
    assert 0.0 < abs(ma["a3fl_adv_weight"]) <= 1.0  # θ' was built (pass 1) and weighed in
    c, _ = atk.learn(ctx, prior, torch_generator(3, Stream.TRIGGER, 5))
    assert not torch.equal(a["trigger"], c["trigger"])  # another round draws other batches


def test_lambda_zero_builds_no_adversarial_model(data):
    c = cfg(params={"lam": 0.0})
    _, m = build(c).learn(context(c, data), {}, torch_generator(3, Stream.TRIGGER, 2))
    assert m["a3fl_adv_weight"] == 0.0


def test_update_respects_the_pgd_radius_and_the_boost(data):
    c = cfg()
    atk = build(c)
    own = ClientData(*(torch.from_numpy(a) for a in data.writer_train(0)))
    torch.manual_seed(0)
    model = CNN()
    gp = get_flat(model).clone()
    hp = SGDParams(1, 4, 0.1)
    state = {"trigger": torch.full((5, 5), 0.1)}
    task = ClientTask(1, 0, 0, "attacker", 9, boost=4.0, radius=0.05, attack_state=state)
    delta, _ = atk.craft(task, model, gp, own, None, hp, torch.Generator().manual_seed(1))
    # projected onto M/β = 0.05 after each pass, then boosted: ‖Δ‖ ≤ β·M/β = 0.2 (float32 rounding)
    assert float(torch.linalg.vector_norm(delta.double())) <= 0.2 * (1 + 1e-5)
    assert float(torch.linalg.vector_norm(delta.double())) > 0.2 * 0.99  # training leaves the ball
    # no clipping: β(w − w_t), which is 4× the unboosted update of the same draws (dropout
    # included: each craft in the same seeded scope, as the client runs it)
    free = ClientTask(1, 0, 0, "attacker", 9, boost=4.0, attack_state=state)
    with client_rng_scope(9):
        boosted, _ = atk.craft(free, model, gp, own, None, hp, torch.Generator().manual_seed(1))
    plain = A3FL(A3FLParams(**{**c.attack.params, "boost": False}), c.attack.target_label, 4)
    with client_rng_scope(9):
        raw, _ = plain.craft(task, model, gp, own, None, hp, torch.Generator().manual_seed(1))
    assert torch.equal(boosted, 4.0 * raw)  # boost: false also ignores the radius (the authors' code)
    assert float(torch.linalg.vector_norm(raw.double())) > 0.05


def test_the_poisoned_share_of_each_batch_is_floor_ratio_times_b(data, monkeypatch):
    """⌊0.25·4⌋ = 1 of each 4-image batch stamped and relabelled (int(bkd_ratio·B))."""
    seen = []
    atk = A3FL(A3FLParams(), target=7, batch_size=4)
    own = ClientData(*(torch.from_numpy(a[:8]) for a in data.writer_train(0)))

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(10))

        def forward(self, x):
            seen.append(x.clone())
            return self.w.expand(len(x), 10)

    import fl_core.training as tr
    orig, labels = tr.sgd_step, []
    monkeypatch.setattr(tr, "sgd_step", lambda m, x, y, lr: (labels.append(y.clone()), orig(m, x, y, lr))[1])
    atk.poisoned_epochs(Spy(), own, {"trigger": torch.zeros(5, 5)}, SGDParams(1, 4, 0.1), torch.Generator())
    assert len(seen) == 2  # 8 images, batches of 4
    own_patches = {to_input(own.pixels)[i, 0, 2:7, 2:7].sum().item() for i in range(len(own))}
    for x, y in zip(seen, labels):
        assert torch.equal(x[0, 0, 2:7, 2:7], torch.zeros(5, 5)) and int(y[0]) == 7  # stamped (trigger 0)
        assert all(x[i, 0, 2:7, 2:7].sum().item() in own_patches for i in (1, 2, 3))  # the rest as they were


def test_a_simulation_learns_and_measures_with_its_trigger(data):
    sim = Simulation(cfg(), data=data)
    history = sim.run()
    assert [("a3fl_trigger_loss" in m) for m in history] == [False, True, True]  # start_round 1
    assert all(m["backdoor_acc"] is not None for m in history)
    t = sim.state.attack_state["trigger"]
    assert t.shape == (5, 5) and not torch.equal(t, torch.full((5, 5), 0.5))


def test_resume_from_a_checkpoint_is_bit_exact(tmp_path, data):
    whole = Simulation(cfg(rounds=4), data=data)
    expected = whole.run()
    half = Simulation(cfg(rounds=4), data=data)
    half.step(), half.step()
    save_state(tmp_path / "s.pt", half.state)
    loaded = load_state(tmp_path / "s.pt", cfg(rounds=4))
    assert torch.equal(loaded.attack_state["trigger"], half.state.attack_state["trigger"])
    rest = Simulation(cfg(rounds=4), data=data, state=loaded)
    got = [rest.step(), rest.step()]
    drop = ("round_seconds", "eval_seconds", "aggregate_seconds")
    assert [{k: v for k, v in m.items() if k not in drop} for m in got] == \
        [{k: v for k, v in m.items() if k not in drop} for m in expected[2:]]
    assert torch.equal(rest.state.global_params, whole.state.global_params)
    assert torch.equal(rest.state.attack_state["trigger"], whole.state.attack_state["trigger"])


def test_defaults_are_the_authors():
    p = parse_config({"attack": {"kind": "a3fl", "fraction": 0.1}}).attack
    assert p.backdoor == "trigger"
    assert {k: p.params[k] for k in ("row", "col", "size", "init", "trigger_epochs", "trigger_lr", "lam",
                                     "adv_epochs", "adv_every", "poison_ratio")} == \
        {"row": 2, "col": 2, "size": 5, "init": 0.5, "trigger_epochs": 200, "trigger_lr": 0.01, "lam": 0.01,
         "adv_epochs": 5, "adv_every": 1, "poison_ratio": 0.25}


@pytest.mark.parametrize("attack,match", [
    ({"params": {"row": 24}}, r"attack\.params.*row \+ size must be at most 28"),
    ({"params": {"col": 20, "size": 9}}, r"attack\.params.*col \+ size must be at most 28"),
    ({"params": {"trigger_lr": 0}}, r"attack\.params\.trigger_lr"),
    ({"params": {"adv_epochs": 0}}, r"attack\.params\.adv_epochs"),
    ({"params": {"poison_ratio": 1.5}}, r"attack\.params\.poison_ratio"),
    ({"params": {"trigger_iters": 5}}, r"attack\.params"),
    ({"backdoor": "semantic"}, r"attack\.backdoor.*trigger"),
])
def test_config_errors_name_the_key(attack, match):
    with pytest.raises(ConfigError, match=match):
        parse_config({"attack": {"kind": "a3fl", "fraction": 0.1, **attack}})


def test_w_in_learn_is_the_cosine_of_the_conv_gradients(data):
    """Replayed by hand with the same draws (the scope seed, pass 0's batch order, θ'’s batch
    orders): pass 0 sums the global model's backdoor-CE gradients (plain `.backward()`, as the
    authors' never-zeroed `model.grad`), θ' unlearns the pass-0 trigger, and learn's w is the
    mean conv cosine of the two. Gradients of the same ops in the same order: equal up to
    float32 summation order inside autograd (rel 1e-5 is generous)."""
    import torch.nn.functional as F

    from fl_core.params import set_flat

    c = cfg(params={"trigger_epochs": 2})
    atk, ctx = build(c), context(c, data)
    _, m = atk.learn(ctx, {}, torch_generator(3, Stream.TRIGGER, 2))
    gen = torch_generator(3, Stream.TRIGGER, 2)
    scope = int(torch.randint(0, 2**62, (1,), generator=gen))
    model = CNN()
    set_flat(model, ctx.global_params)
    model.eval()
    x, t = to_input(ctx.data.pixels), torch.full((5, 5), 0.5)
    convs = [n for n, _ in model.named_parameters() if "conv" in n]
    with client_rng_scope(scope):
        for idx in atk._batches(len(x), gen, x.device):
            tt = t.clone().requires_grad_(True)
            y = torch.full((len(idx),), c.attack.target_label)
            F.cross_entropy(model(paste(x[idx], tt, atk.p)), y).backward()  # model.grad accumulates
            t = (t - 0.01 * tt.grad.sign()).clamp(0, 1)
        glob = {n: p.grad.clone() for n, p in model.named_parameters()}
        _, adv_grads = atk.adversarial_model(model, paste(x, t, atk.p), ctx.data.labels, gen)
    cos = [F.cosine_similarity(adv_grads[n].view(-1), glob[n].view(-1), dim=0) for n in convs]
    assert m["a3fl_adv_weight"] == pytest.approx(float(sum(cos) / 4), rel=1e-5)
    adv, _ = atk.adversarial_model(model, paste(x, t, atk.p), ctx.data.labels, torch.Generator())
    weights_cos = conv_cosine({n: p.detach() for n, p in adv.named_parameters()},
                              {n: p.detach() for n, p in model.named_parameters()})
    assert abs(weights_cos - m["a3fl_adv_weight"]) > 1e-3  # not BackFed's weight cosine
