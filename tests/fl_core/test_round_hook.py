"""The attacks' round hook (colluding attackers, `fl_core.attacks.base.Forger`) and the
`every-round` schedule: what the forger sees under each knowledge level, where it runs
(after training, before every defense), and that it keeps results exact under resume,
execution order and seeds. A test-only forging attack is registered for these tests.

Inputs are small integers in R² or R³, so the float64/float32 arithmetic is exact and the
asserts use torch.equal.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from fl_core.attacks import ATTACKS
from fl_core.attacks.base import AttackSpec, HonestCraft, KnowledgeParams
from fl_core.client import ClientRunner
from fl_core.config import parse_config
from fl_core.errors import ConfigError
from fl_core.round import apply_round
from fl_core.sampling import Population, plan_round
from fl_core.simulate import Simulation
from fl_core.state import SimulationState, load_state, save_state
from fl_core.types import ClientResult, ClientTask, RoundPlan

SEEN: list[dict] = []


class NegatedMean(HonestCraft):
    """Sends −mean(known) from every attacker (ByzFL's sign flipping), and records what it saw."""

    def __init__(self, knowledge):
        self.knowledge = knowledge

    def forge(self, known, own, ctx, gen):
        SEEN.append({"known": known.clone(), "own": own.clone(), "ctx": ctx,
                     "draw": torch.rand(1, generator=gen).item()})
        return (-known.double().mean(dim=0)).float().expand_as(own).clone(), {"forge_rows": float(own.shape[0])}


@pytest.fixture(autouse=True, scope="module")
def test_forger():
    ATTACKS.register(AttackSpec("test-forge", "test forge", lambda p, c: NegatedMean(p.knowledge), KnowledgeParams))
    yield
    ATTACKS.unregister("test-forge")


@pytest.fixture(autouse=True)
def _clear():
    SEEN.clear()


def cfg(**attack):
    return parse_config({"seed": 3, "fl": {"rounds": 4, "clients_per_round": 4, "local_epochs": 1, "batch_size": 5},
                         "attack": {"kind": "test-forge", "fraction": 0.25, "schedule": "every-round",
                                    "num_tasks": 3, **attack}})


def result(k, role, delta, n=1):
    return ClientResult(k, 0, role, n, torch.tensor(delta, dtype=torch.float32))


def plan_of(results, round_idx=0):
    return RoundPlan(round_idx, tuple(ClientTask(round_idx, r.client_index, 0, r.role, 0) for r in results))


RESULTS = [result(0, "benign", [1, 0]), result(1, "attacker", [0, 5]), result(2, "benign", [3, 0]),
           result(3, "attacker", [0, 7])]


def state():
    return SimulationState(round_idx=0, global_params=torch.zeros(2), config_hash="test")


def test_omniscient_forger_sees_the_benign_updates_and_replaces_the_attackers_rows():
    c = cfg()
    new, stats = apply_round(c, state(), plan_of(RESULTS), RESULTS, defenses=[])
    (seen,) = SEEN
    assert torch.equal(seen["known"], torch.tensor([[1.0, 0], [3, 0]]))  # benign rows, client order
    assert torch.equal(seen["own"], torch.tensor([[0.0, 5], [0, 7]]))    # the attackers' honest rows
    assert (seen["ctx"].cohort_size, seen["ctx"].num_attackers, seen["ctx"].knowledge) == (4, 2, "omniscient")
    # FedAvg (weights 1 each) of (1,0), (−2,0), (3,0), (−2,0): (0, 0)
    assert torch.equal(new.global_params, torch.zeros(2))
    assert stats.attacker_norm_pre == 2.0 and stats.extra["forge_rows"] == 2.0


def test_own_data_forger_sees_only_the_attackers_updates():
    c = cfg(params={"knowledge": "own-data"})
    new, _ = apply_round(c, state(), plan_of(RESULTS), RESULTS, defenses=[])
    assert torch.equal(SEEN[0]["known"], SEEN[0]["own"])
    # −mean((0,5), (0,7)) = (0, −6): mean of (1,0), (0,−6), (3,0), (0,−6) = (1, −3)
    assert torch.equal(new.global_params, torch.tensor([1.0, -3.0]))


def test_forging_runs_before_the_defenses():
    """The attackers' rows are forged from raw updates, then clipped like every update."""
    from fl_core.build import make_defenses

    c = parse_config({"seed": 3, "fl": {"clients_per_round": 4},
                      "attack": {"kind": "test-forge", "fraction": 0.25, "schedule": "every-round", "num_tasks": 3},
                      "defense": {"norm_bound": 1.0}})
    big = [result(0, "benign", [4, 0]), result(1, "attacker", [0, 1]), result(2, "benign", [0, 4]),
           result(3, "benign", [4, 4])]
    new, stats = apply_round(c, state(), plan_of(big), big, defenses=make_defenses(c))
    # known = raw benign rows: −mean((4,0),(0,4),(4,4)) = (−8/3, −8/3), norm 3.77 > M = 1
    assert torch.equal(SEEN[0]["known"], torch.tensor([[4.0, 0], [0, 4], [4, 4]]))
    assert stats.attacker_norm_post == pytest.approx(1.0, rel=1e-6)  # clipped after forging
    assert stats.attacker_norm_pre == pytest.approx(8 / 3 * 2 ** 0.5, rel=1e-6)


def test_forging_is_independent_of_arrival_order():
    c = cfg()
    ref, _ = apply_round(c, state(), plan_of(RESULTS), RESULTS, defenses=[])
    for perm in ([3, 2, 1, 0], [1, 3, 0, 2]):
        got, _ = apply_round(c, state(), plan_of(RESULTS), [RESULTS[i] for i in perm], defenses=[])
        assert torch.equal(got.global_params, ref.global_params)
    draws = {s["draw"] for s in SEEN}
    assert len(draws) == 1  # the forge generator is a function of (seed, round) only


def test_a_result_twice_is_refused_while_held():
    from fl_core.round import RoundFold

    fold = RoundFold(cfg(), state(), plan_of(RESULTS), [])
    fold.add(RESULTS[1])
    with pytest.raises(ValueError, match="twice"):
        fold.add(RESULTS[1])
    with pytest.raises(ValueError, match="no result"):
        fold.finish()


def test_every_round_schedule_puts_round_eps_ck_pool_members_in_each_round():
    c = parse_config({"seed": 5, "fl": {"clients_per_round": 10},
                      "attack": {"kind": "test-forge", "fraction": 0.2, "schedule": "every-round", "num_tasks": 3}})
    pool = (2, 5, 11, 17, 23, 31, 40, 41)
    pop = Population(50, [10] * 50, pool)
    seen_attackers = set()
    for r in range(20):
        p = plan_round(c, pop, r)
        att = [t.client_index for t in p.tasks if t.role == "attacker"]
        assert len(att) == 2 and len(set(att)) == 2 and set(att) <= set(pool)
        assert len(p.tasks) == 10
        seen_attackers |= set(att)
        assert plan_round(c, pop, r) == p  # a pure function of (config, round)
    assert len(seen_attackers) > 2  # drawn per round, not fixed


def test_every_round_needs_at_least_one_attacker_per_round():
    with pytest.raises(ConfigError, match="attack.fraction"):
        parse_config({"fl": {"clients_per_round": 4},
                      "attack": {"kind": "test-forge", "fraction": 0.1, "schedule": "every-round", "num_tasks": 3}})


def test_resume_and_execution_order_keep_forged_rounds_bit_identical(tiny_data, tmp_path):
    c = cfg()
    straight = Simulation(c, data=tiny_data)
    straight.run()
    assert SEEN and all(s["ctx"].num_attackers == 1 for s in SEEN)  # round(0.25·4) = 1 per round

    first = Simulation(c, data=tiny_data)
    first.step(), first.step()
    save_state(tmp_path / "state.pt", first.state)
    resumed = Simulation(c, data=tiny_data, state=load_state(tmp_path / "state.pt", c))
    resumed.run()
    assert torch.equal(resumed.state.global_params, straight.state.global_params)

    class Shuffled:
        def __init__(self, runner):
            self.runner = runner

        def map(self, tasks, gp):
            order = list(range(len(tasks)))
            random.Random(len(tasks)).shuffle(order)
            done = {i: self.runner.run([tasks[i]], gp)[0] for i in order}
            return [done[i] for i in range(len(tasks))]

    shuffled = Simulation(c, data=tiny_data, executor=Shuffled(ClientRunner(c, tiny_data, "cpu")))
    shuffled.run()
    assert torch.equal(shuffled.state.global_params, straight.state.global_params)
    other = Simulation(parse_config({**c.model_dump(), "seed": 4}), data=tiny_data)
    other.run()
    assert not torch.equal(other.state.global_params, straight.state.global_params)
