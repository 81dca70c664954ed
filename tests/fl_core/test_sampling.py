"""Attacker schedules and cohort sampling (Sun et al. 2019 §2, NOTES.md)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fl_core.config import parse_config
from fl_core.errors import ConfigError
from fl_core.sampling import Population, attack_frequency, attacker_pool, plan_round, sample_cohort


def config(**attack):
    c = {"kind": "model-replacement", "fraction": 0.1, **attack}
    return parse_config({"seed": 5, "fl": {"clients_per_round": 8}, "attack": c})


def pop(config, k=40, targets=(0, 1, 2)):
    return Population(k, tuple([10] * k), attacker_pool(config, k, targets))


@pytest.mark.parametrize("eps,ck,f", [(0.033, 30, 1), (0.0033, 30, 10), (0.01, 10, 10), (0.5, 8, 1)])
def test_fixed_frequency_f_is_inverse_of_eps_ck(eps, ck, f):
    c = parse_config({"fl": {"clients_per_round": ck}, "attack": {"kind": "pgd", "fraction": eps},
                      "defense": {"norm_bound": 3}})
    assert attack_frequency(c) == f  # round(1/(ε·C·K)): 1.01→1, 10.1→10, 10→10, 0.25→1


def test_fixed_frequency_rounds_follow_reference_phase():
    """f = 10: rounds where round % 10 == 5 (the reference code's phase), one attacker each."""
    c = config(frequency=10)
    p = pop(c)
    attacked = [r for r in range(40) if plan_round(c, p, r).num_attackers]
    assert attacked == [5, 15, 25, 35]
    for r in attacked:
        plan = plan_round(c, p, r)
        att = [t for t in plan.tasks if t.role == "attacker"]
        assert len(att) == 1 and att[0].client_index in p.attackers
        assert len(plan.tasks) == 8


def test_fixed_frequency_start_round_shifts_the_schedule():
    c = config(frequency=4, start_round=10)
    attacked = [r for r in range(30) if plan_round(c, pop(c), r).num_attackers]
    assert attacked == [12, 16, 20, 24, 28]


def test_every_round_attack_with_frequency_one():
    c = config(frequency=1)
    assert all(plan_round(c, pop(c), r).num_attackers == 1 for r in range(20))


def test_attacker_pool_is_round_eps_k_fixed_and_never_a_target():
    c = config()
    p1 = attacker_pool(c, 40, (0, 1, 2))
    assert len(p1) == 4 and p1 == attacker_pool(c, 40, (0, 1, 2))
    assert not set(p1) & {0, 1, 2}


@settings(max_examples=40, deadline=None)
@given(st.floats(0.01, 0.9), st.integers(10, 500))
def test_attacker_count_is_round_eps_k(eps, k):
    c = parse_config({"attack": {"kind": "model-replacement", "fraction": eps}})
    m = round(eps * k)
    if m < 1:
        with pytest.raises(ConfigError, match="attack.fraction"):
            attacker_pool(c, k, ())
    else:
        assert len(attacker_pool(c, k, ())) == m


def test_too_few_writers_for_eps_is_a_clear_error():
    c = parse_config({"attack": {"kind": "model-replacement", "fraction": 0.001}})
    with pytest.raises(ConfigError, match=r"attack\.fraction.*at least 0\.01"):
        attacker_pool(c, 100, ())


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 2**31))
def test_plan_round_is_deterministic_and_without_replacement(round_idx, seed):
    c = parse_config({"seed": seed, "fl": {"clients_per_round": 8},
                      "attack": {"kind": "model-replacement", "fraction": 0.1, "schedule": "random-sampling"}})
    p = pop(c)
    a, b = plan_round(c, p, round_idx), plan_round(c, p, round_idx)
    assert a == b
    cohort = [t.client_index for t in a.tasks]
    assert len(set(cohort)) == len(cohort) == 8


def test_with_replacement_allows_duplicates_with_distinct_streams():
    c = parse_config({"fl": {"clients_per_round": 30, "sampling": "with-replacement"}})
    p = Population(5, (1,) * 5, ())
    plan = plan_round(c, p, 0)
    keys = [(t.client_index, t.slot) for t in plan.tasks]
    assert len({k for k, _ in keys}) <= 5 and len(set(keys)) == 30
    assert len({t.seed for t in plan.tasks}) == 30


def test_cohort_larger_than_population_without_replacement_is_an_error():
    c = parse_config({"fl": {"clients_per_round": 50}})
    with pytest.raises(ConfigError, match="fl.clients_per_round"):
        sample_cohort(c, 10, 0)


def test_random_sampling_count_is_hypergeometric():
    """K = 40, pool εK = 10, cohort C·K = 8: over 4,000 rounds (seed 5) the attacker-count
    histogram matches hypergeometric(40, 10, 8) within total-variation distance 0.03
    (the expected TV of 4,000 draws on 9 cells is ≈ 0.01)."""
    c = config(schedule="random-sampling", fraction=0.25)
    p = pop(c)
    assert len(p.attackers) == 10
    counts = np.bincount([plan_round(c, p, r).num_attackers for r in range(4000)], minlength=9) / 4000
    pmf = np.array([math.comb(10, j) * math.comb(30, 8 - j) / math.comb(40, 8) for j in range(9)])
    assert 0.5 * np.abs(counts - pmf).sum() < 0.03
    assert counts.argmax() == pmf.argmax() == 2


def test_random_sampling_respects_start_round():
    c = config(schedule="random-sampling", fraction=0.5, start_round=50)
    p = pop(c)
    assert all(plan_round(c, p, r).num_attackers == 0 for r in range(50))
    assert sum(plan_round(c, p, r).num_attackers for r in range(50, 60)) > 0


def test_attacker_pool_is_the_same_for_every_number_of_backdoor_tasks(tiny_data):
    """The fig 3 cells (N = 1…5 here) compare the same attackers: the pool is drawn outside
    the reserved head of the target order, and the targets of smaller N are nested in
    those of larger N (the same permutation's prefix)."""
    from fl_core.backdoors import select_backdoor

    pools, targets = [], []
    for n in (1, 2, 3, 5):
        c = parse_config({"seed": 3, "attack": {"kind": "model-replacement", "fraction": 0.2, "num_tasks": n,
                                                "max_tasks": 5}})
        b = select_backdoor(c, tiny_data)
        pools.append(attacker_pool(c, tiny_data.num_writers, b.reserved))
        targets.append(set(b.targets))
        assert not set(pools[-1]) & set(b.reserved) and set(b.targets) <= set(b.reserved)
    assert all(p == pools[0] for p in pools) and len(pools[0]) == 2  # round(0.2 · 12)
    assert targets[0] < targets[1] < targets[2] < targets[3]


def test_targets_do_not_depend_on_eps(tiny_data):
    from fl_core.backdoors import select_backdoor

    got = {
        select_backdoor(parse_config({"seed": 3, "attack": {"kind": "pgd", "fraction": eps, "num_tasks": 3}, "defense": {"norm_bound": 1}}), tiny_data).targets
        for eps in (0.09, 0.2, 0.4)
    }
    assert len(got) == 1


def test_num_tasks_beyond_the_reserved_head_is_refused(tiny_data):
    """K = 12, ε·K = round(0.5·12) = 6 attackers: at most R = 12 − 6 = 6 targets."""
    from fl_core.backdoors import select_backdoor

    c = parse_config({"attack": {"kind": "model-replacement", "fraction": 0.5, "num_tasks": 7}})
    with pytest.raises(ConfigError) as e:
        select_backdoor(c, tiny_data)
    assert e.value.path == "attack.num_tasks" and "at most 6" in e.value.allowed
    with pytest.raises(ConfigError) as e:
        parse_config({"attack": {"kind": "model-replacement", "fraction": 0.5, "num_tasks": 60}})
    assert "attack.max_tasks" in e.value.allowed


def test_stop_round_ends_the_attack_for_both_schedules():
    """Attackers act in start_round ≤ t < stop_round: f = 4 from round 10 → 12, 16 (20 is the stop)."""
    c = config(frequency=4, start_round=10, stop_round=20)
    assert [r for r in range(30) if plan_round(c, pop(c), r).num_attackers] == [12, 16]
    c = config(schedule="random-sampling", fraction=0.5, start_round=5, stop_round=8)
    p = pop(c)
    assert all(plan_round(c, p, r).num_attackers == 0 for r in [*range(5), *range(8, 40)])
    assert sum(plan_round(c, p, r).num_attackers for r in range(5, 8)) > 0


def test_stop_round_must_come_after_start_round():
    with pytest.raises(ConfigError, match="attack.stop_round"):
        config(start_round=10, stop_round=10)


def test_a_new_key_at_its_neutral_default_keeps_every_trial_key():
    """attack.stop_round was added after sweeps existed: at null it is left out of the hash
    (HASH_NEUTRAL_DEFAULTS), so old trial keys, warm-up keys and checkpoints stay valid;
    set, it changes the hash."""
    import hashlib
    import json

    from fl_core.config import HASH_NEUTRAL_DEFAULTS, NEVER_HASHED, config_hash, flatten

    c = config(pool_rule="legacy-eligible")  # issue 25: `unbiased` (default) is hashed on purpose
    # the key set before (fl.vectorized_chunk, added later, is never hashed at all)
    old = {k: v for k, v in flatten(c).items() if k not in HASH_NEUTRAL_DEFAULTS and k not in NEVER_HASHED}
    blob = json.dumps(old, sort_keys=True, separators=(",", ":"))
    assert config_hash(c) == hashlib.sha256(blob.encode()).hexdigest()
    assert config_hash(config(stop_round=20, pool_rule="legacy-eligible")) != config_hash(c)
