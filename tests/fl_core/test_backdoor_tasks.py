"""The backdoor-task plug-ins (`fl_core/backdoors/`) and DBA (`fl_core/attacks/dba.py`):
golden tests of the trigger pattern, its stamping, D_mal, the evaluation sets, DBA's local
triggers, and the config rules that tie them together."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fl_core.attacks.dba import DBA
from fl_core.backdoors import BACKDOORS, build_task
from fl_core.backdoors.trigger import TriggerParams, pattern, poisoned, stamp
from fl_core.training import ClientData, SGDParams
from fl_core.config import config_hash, parse_config
from fl_core.backdoors import select_backdoor
from fl_core.errors import ConfigError
from fl_core.sampling import Population, attacker_pool, plan_round
from fl_core.types import ClientTask

# DBA's MNIST trigger, by hand: bars at rows 0 and 3, columns 0-3 and 6-9.
DBA_PIXELS = {(r, c) for r in (0, 3) for c in (0, 1, 2, 3, 6, 7, 8, 9)}


def test_both_tasks_are_registered():
    assert set(BACKDOORS) >= {"semantic", "trigger"}


def test_the_trigger_is_dbas_four_bars_and_each_part_is_one_bar():
    full = pattern(TriggerParams())
    assert {tuple(p) for p in np.argwhere(full)} == DBA_PIXELS
    parts = [pattern(TriggerParams(), i) for i in range(4)]
    assert [{tuple(p) for p in np.argwhere(m)} for m in parts] == [
        {(0, 0), (0, 1), (0, 2), (0, 3)}, {(0, 6), (0, 7), (0, 8), (0, 9)},
        {(3, 0), (3, 1), (3, 2), (3, 3)}, {(3, 6), (3, 7), (3, 8), (3, 9)},
    ]
    assert np.array_equal(np.logical_or.reduce(parts), full)
    moved = pattern(TriggerParams(row=2, col=5))
    assert {tuple(p) for p in np.argwhere(moved)} == {(r + 2, c + 5) for r, c in DBA_PIXELS}


def test_a_trigger_that_does_not_fit_the_image_is_refused():
    with pytest.raises(ConfigError, match=r"attack\.backdoor_params.*col must be at most 18"):
        parse_config({"attack": {"backdoor": "trigger", "backdoor_params": {"col": 19}}})
    with pytest.raises(ConfigError, match=r"attack\.backdoor_params\.vallue.*did you mean `value`"):
        parse_config({"attack": {"backdoor": "trigger", "backdoor_params": {"vallue": 3}}})


def test_stamp_sets_only_the_mask_and_leaves_its_input_alone():
    img = np.full((2, 28, 28), 255, np.uint8)
    out = stamp(img, pattern(TriggerParams()), 0)
    assert (img == 255).all()  # a copy
    assert {tuple(p) for p in np.argwhere(out[1] == 0)} == DBA_PIXELS and (out[0] == out[1]).all()
    t = stamp(torch.from_numpy(img), pattern(TriggerParams(), 3), 7)
    assert int((t == 7).sum()) == 2 * 4 and int(t[0, 3, 6]) == 7


def test_d_mal_is_the_attackers_own_non_target_images_stamped_and_relabelled():
    px = torch.full((4, 28, 28), 255, dtype=torch.uint8)
    px[:, 14, 14] = torch.tensor([10, 11, 12, 13], dtype=torch.uint8)  # an id per image
    own = ClientData(px, torch.tensor([1, 3, 1, 5]))
    mal = poisoned(own, pattern(TriggerParams()), 0, target=1)
    assert mal.pixels[:, 14, 14].tolist() == [11, 13]  # the images labelled 3 and 5
    assert mal.labels.tolist() == [1, 1] and mal.labels.dtype == torch.long
    assert all((mal.pixels[i] == 0).sum() == 16 for i in range(2))
    only_target = ClientData(px[:2], torch.tensor([1, 1]))
    assert poisoned(only_target, pattern(TriggerParams()), 0, target=1).pixels[:, 14, 14].tolist() == [10, 11]


def test_trigger_evaluation_sets_by_hand():
    """Test labels [1, 2, 1, 7], target 1: the attack success rate is measured on the two
    non-target images, stamped; clean accuracy and collateral on the same two, unstamped."""
    cfg = parse_config({"attack": {"backdoor": "trigger"}})
    task = build_task(cfg, None, select_backdoor(cfg, None))
    px = np.full((4, 28, 28), 255, np.uint8)
    sets = task.eval_sets(px, np.array([1, 2, 1, 7]), np.array([0, 0, 1, 2]))
    assert sets.backdoor.shape == (2, 28, 28) and (sets.backdoor[:, 3, 9] == 0).all()
    assert sets.heldout is None
    assert sets.clean.tolist() == [False, True, False, True] == sets.collateral.tolist()


def test_trigger_reserves_no_writer_and_semantic_keeps_its_targets(tiny_data):
    trig = parse_config({"attack": {"kind": "model-replacement", "fraction": 0.2, "backdoor": "trigger"}})
    sets = select_backdoor(trig, tiny_data)
    assert sets.targets == () and sets.reserved == () and len(sets.train_rows) == 0
    sem = parse_config({"attack": {"kind": "model-replacement", "fraction": 0.2, "num_tasks": 3}})
    assert len(select_backdoor(sem, tiny_data).targets) == 3


def test_dba_resolves_to_the_trigger_task_and_refuses_the_semantic_one():
    dba = parse_config({"attack": {"kind": "dba", "fraction": 0.1}})
    assert dba.attack.backdoor == "trigger" and dba.attack.backdoor_params == {"row": 0, "col": 0, "value": 0}
    with pytest.raises(ConfigError, match=r"attack\.backdoor.*trigger \(or null\) when attack.kind = dba"):
        parse_config({"attack": {"kind": "dba", "fraction": 0.1, "backdoor": "semantic"}})
    with pytest.raises(ConfigError, match=r"attack\.backdoor.*did you mean `trigger`"):
        parse_config({"attack": {"kind": "pgd", "fraction": 0.1, "backdoor": "triger"}, "defense": {"norm_bound": 1}})


def test_the_default_task_leaves_the_hash_alone_and_explicit_semantic_equals_it():
    base = {"attack": {"kind": "pgd", "fraction": 0.033}, "defense": {"norm_bound": 3.0}}
    explicit = {"attack": {**base["attack"], "backdoor": "semantic"}, "defense": base["defense"]}
    trig = {"attack": {**base["attack"], "backdoor": "trigger"}, "defense": base["defense"]}
    assert config_hash(parse_config(base)) == config_hash(parse_config(explicit))
    assert config_hash(parse_config(base)) != config_hash(parse_config(trig))


def test_attackers_carry_their_position_in_the_pool(tiny_data):
    cfg = parse_config({"seed": 5, "fl": {"clients_per_round": 6},
                        "attack": {"kind": "dba", "fraction": 0.5, "schedule": "random-sampling"}})
    pool = attacker_pool(cfg, tiny_data.num_writers, ())
    pop = Population(tiny_data.num_writers, tiny_data.train_counts(), pool)
    seen = 0
    for r in range(4):
        for t in plan_round(cfg, pop, r).tasks:
            if t.role == "attacker":
                assert pool[t.rank] == t.client_index
                seen += 1
            else:
                assert t.rank is None
    assert seen > 0


class Recorder:
    """A recipe that records what D_mal it is given and sends zeros."""

    def __init__(self):
        self.seen: list[ClientData] = []

    def replacement(self, model, w_t, own, mal, hp, gen, beta):
        self.seen.append(mal)
        return torch.zeros_like(w_t), {}


@pytest.mark.parametrize("rank,bar", [(0, (0, 0)), (1, (0, 6)), (2, (3, 0)), (3, (3, 6)), (6, (3, 0))])
def test_dba_attacker_r_stamps_bar_r_mod_4_on_its_own_images(rank, bar):
    px = torch.full((3, 28, 28), 255, dtype=torch.uint8)
    own = ClientData(px, torch.tensor([4, 1, 9]))
    rec = Recorder()
    dba = DBA(iterations=1, recipe=rec, trigger=TriggerParams(), target=1)
    task = ClientTask(0, 5, 0, "attacker", 1, boost=2.0, rank=rank)
    _, metrics = dba.craft(task, None, torch.zeros(3), own, None, SGDParams(1, 2, 0.1), torch.Generator())
    (mal,) = rec.seen
    assert metrics["dba_part"] == rank % 4
    assert len(mal) == 2 and mal.labels.tolist() == [1, 1]
    r, c = bar
    assert {tuple(p) for p in torch.nonzero(mal.pixels[0] == 0).tolist()} == {(r, c + i) for i in range(4)}


def test_semantic_d_mal_is_the_target_writers_sevens_for_every_attacker(tiny_data):
    cfg = parse_config({"attack": {"kind": "model-replacement", "fraction": 0.2, "num_tasks": 2}})
    sets = select_backdoor(cfg, tiny_data)
    task = build_task(cfg, tiny_data, sets)
    own = ClientData(torch.zeros(1, 28, 28, dtype=torch.uint8), torch.tensor([3]))
    mal = task.malicious(own)
    assert torch.equal(mal.pixels, torch.from_numpy(tiny_data.train_pixels[sets.train_rows]))
    assert (mal.labels == 1).all() and len(mal) == len(sets.train_rows) > 0


def test_the_recipe_defaults_to_the_attacks_own():
    """DBA trains on mixed poisoned batches unless told otherwise; every other attack keeps the
    paper's reference recipe, and leaving the key out hashes like writing that recipe."""
    dba = parse_config({"attack": {"kind": "dba", "fraction": 0.1}})
    assert dba.attack.params["recipe"] == "mixed"
    own = {"attack": {"kind": "dba", "fraction": 0.1, "params": {"recipe": "reference"}}}
    assert parse_config(own).attack.params["recipe"] == "reference"
    pgd = {"attack": {"kind": "pgd", "fraction": 0.1}, "defense": {"norm_bound": 1.0}}
    explicit = {"attack": {**pgd["attack"], "params": {"recipe": "reference"}}, "defense": pgd["defense"]}
    assert parse_config(pgd).attack.params["recipe"] == "reference"
    assert config_hash(parse_config(pgd)) == config_hash(parse_config(explicit))
