"""Attacks that learn their trigger (`fl_core.attacks.base.LearnedTrigger`: A3FL, IBA): when
`learn` runs and on what, that its state reaches the round's attackers and the evaluator,
and that it is checkpointed (resume bit-exact, the file read back as untrusted input).

A test-only attack is registered: its "trigger" is a grey level that `learn` raises by one
each attacked round and that `stamp` paints on pixel (0, 0); `craft` records the state it
was handed. Integer pixels and counters: every assert is exact.
"""

from __future__ import annotations

import pickle

import pytest
import torch

from fl_core.attacks import ATTACKS
from fl_core.attacks.base import AttackSpec
from fl_core.config import parse_config
from fl_core.data import load_data
from fl_core.errors import CheckpointError
from fl_core.simulate import Simulation
from fl_core.state import load_state, save_state
from fl_core.types import ClientTask

LEARNED: list[dict] = []
CRAFTED: list[dict] = []
STAMPED: list[int] = []


class GreyLevel:
    def learn(self, ctx, state, gen):
        level = int(state["level"]) + 1 if state else 1
        LEARNED.append({"round": ctx.round_idx, "attackers": ctx.attackers, "images": len(ctx.data),
                        "draw": torch.randint(1000, (1,), generator=gen).item(), "had": dict(state)})
        return {"level": torch.tensor(level)}, {"trigger_level": float(level)}

    def stamp(self, pixels, state):
        out = pixels.clone()
        out[:, 0, 0] = int(state["level"]) * 10 if state else 0
        STAMPED.append(int(state["level"]) if state else 0)
        return out

    def craft(self, task, model, global_params, benign, malicious, hp, gen):
        from fl_core.training import local_train

        CRAFTED.append({"round": task.round_idx, "client": task.client_index,
                        "level": int(task.attack_state["level"])})
        return local_train(model, global_params, benign, hp, gen)


@pytest.fixture(autouse=True, scope="module")
def test_attack():
    ATTACKS.register(AttackSpec("test-learned-trigger", "test trigger", lambda p, c: GreyLevel(), backdoor="trigger"))
    yield
    ATTACKS.unregister("test-learned-trigger")


@pytest.fixture(autouse=True)
def _clear():
    LEARNED.clear(), CRAFTED.clear(), STAMPED.clear()


def cfg(rounds=4, defense=None, **attack):
    return parse_config({"defense": defense or {},
        "seed": 5, "data": {"source": "synthetic", "num_writers": 12, "examples_per_writer": 8},
        "fl": {"rounds": rounds, "clients_per_round": 5, "local_epochs": 1, "batch_size": 8, "device": "cpu",
               "eval_every": 1, "checkpoint_every": 1},
        "attack": {"kind": "test-learned-trigger", "backdoor": "trigger", "fraction": 0.4,
                   "schedule": "every-round", "start_round": 1, **attack},
    })


@pytest.fixture(scope="module")
def data():
    return load_data(cfg().data, 5)


def test_learn_runs_once_per_attacked_round_on_the_attackers_data_and_reaches_them(data):
    c = cfg()
    sim = Simulation(c, data=data)
    history = sim.run()
    # round 0 is before attack.start_round: no learning, the evaluator stamps the initial trigger
    assert [e["round"] for e in LEARNED] == [1, 2, 3]
    assert [e["had"] for e in LEARNED][0] == {}
    assert [int(e["had"]["level"]) for e in LEARNED[1:]] == [1, 2]
    for e in LEARNED:
        assert e["attackers"] == tuple(sorted(e["attackers"])) and len(e["attackers"]) == 2  # round(0.4·5)
        assert e["images"] == sum(len(data.writer_train(k)[1]) for k in e["attackers"])
    # every attacker of round t crafted with the trigger learnt for round t
    assert sorted((r["round"], r["level"]) for r in CRAFTED) == [(1, 1), (1, 1), (2, 2), (2, 2), (3, 3), (3, 3)]
    assert {r["client"] for r in CRAFTED if r["round"] == 2} == set(LEARNED[1]["attackers"])
    # the evaluator measured each round with the state in force after it
    assert STAMPED == [0, 1, 2, 3]
    assert [m.get("trigger_level") for m in history] == [None, 1.0, 2.0, 3.0]
    assert int(sim.state.attack_state["level"]) == 3


def test_state_survives_the_attack_stopping():
    """After attack.stop_round the last trigger stays in force for the evaluator (the lifespan
    is measured with it) and nothing is learnt any more."""
    sim = Simulation(cfg(rounds=5, stop_round=3))
    sim.run()
    assert [e["round"] for e in LEARNED] == [1, 2]
    assert STAMPED == [0, 1, 2, 2, 2]


def test_the_draw_depends_on_seed_and_round_only(data):
    Simulation(cfg(), data=data).run()
    first = [e["draw"] for e in LEARNED]
    LEARNED.clear()
    Simulation(cfg(), data=data).run()
    assert [e["draw"] for e in LEARNED] == first
    assert len(set(first)) > 1  # a fresh draw each round (3 draws from 1000: a clash is 0.3%)


def test_resume_from_a_checkpoint_is_bit_exact(tmp_path, data):
    whole = Simulation(cfg(), data=data)
    expected = whole.run()
    half = Simulation(cfg(rounds=4), data=data)
    half.step(), half.step()
    save_state(tmp_path / "state.pt", half.state)
    loaded = load_state(tmp_path / "state.pt", cfg())
    assert int(loaded.attack_state["level"]) == 1
    rest = Simulation(cfg(), data=data, state=loaded)
    got = [rest.step(), rest.step()]
    keep = ("main_acc", "backdoor_acc", "trigger_level", "main_loss")
    assert [{k: m.get(k) for k in keep} for m in got] == [{k: m.get(k) for k in keep} for m in expected[2:]]
    assert torch.equal(rest.state.global_params, whole.state.global_params)
    assert torch.equal(rest.state.attack_state["level"], whole.state.attack_state["level"])


def test_a_checkpoint_with_a_damaged_attack_state_is_refused(tmp_path):
    sim = Simulation(cfg(rounds=2))
    sim.step(), sim.step()
    save_state(tmp_path / "ok.pt", sim.state)
    bad = sim.state.replace(attack_state={"level": torch.tensor(float("nan"))})
    save_state(tmp_path / "bad.pt", bad)
    with pytest.raises(CheckpointError, match="attack_state.level"):
        load_state(tmp_path / "bad.pt")
    payload = torch.load(tmp_path / "ok.pt", weights_only=True)
    payload["attack_state"] = {"level": "not a tensor"}
    torch.save(payload, tmp_path / "forged.pt")
    with pytest.raises(CheckpointError, match="attack_state"):
        load_state(tmp_path / "forged.pt")


def test_a_task_carries_the_state_outside_its_identity():
    t = ClientTask(1, 2, 0, "attacker", 7)
    with_state = ClientTask(1, 2, 0, "attacker", 7, attack_state={"level": torch.tensor(3)})
    assert t == with_state and repr(t) == repr(with_state)
    back = pickle.loads(pickle.dumps(with_state))  # what a Ray actor receives
    assert int(back.attack_state["level"]) == 3


def test_crfl_certifies_the_backdoor_with_the_learned_trigger(data):
    """CRFL's smoothed_backdoor_acc stamps its inputs like backdoor_acc: with the trigger in
    force at the certified round, not the task's fixed pattern."""
    c = cfg(rounds=3, defense={"crfl_sigma": 0.01, "crfl_certify_models": 5})
    history = Simulation(c, data=data).run()
    # one stamp per evaluated round, then the certification's at the last round (level 2)
    assert STAMPED == [0, 1, 2, 2]
    assert "smoothed_backdoor_acc" in history[-1] and "smoothed_backdoor_acc" not in history[-2]
