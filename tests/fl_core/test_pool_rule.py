"""Issue 25: the attacker pool is a uniform draw from the population (`attack.pool_rule:
unbiased`), while `legacy-eligible` reproduces the engine before it, biased toward writers
without a source-label image (the reserved head of the target order holds only eligible ones).

The statistical tests run on the embedded real writers' labels (no pixels, no torch):
- the whole population (439 writers), and
- an 80-writer subset spread over it (every writer i·439//80): the embedded writers sorted by
  id come as ~160 tiny ones (≤ 20 images, most without a 7) then ~230 large ones, so
  `data.max_writers: 80` keeps tiny writers only (median 10 images); the spread subset keeps
  the population's mix (like the issue's 77-writer population, median ~90 images), and
  `max_writers: 80` is tested too, on the share without a 7.

The statistic is averaged over SEEDS seeds (one pool per seed; different seeds draw
independently) and compared with its distribution under the hypothesis "each seed's pool is m
writers drawn uniformly at random from the population": 1000 Monte-Carlo replicates of the
same average, drawn with the fixed generator seed 2025 so the bounds are the same on every
run. The pool must fall between the replicates' 0.5% and 99.5% quantiles. Why averaged and
not per seed: a pool has 3 to 14 members, so one seed's median swings over most of the
population's range (the embedded sizes are bimodal), a per-seed test has no power against
the legacy bias at K = 80, and 2 × SEEDS separate 95% checks would fail by chance one time
in three. Why 0.5%/99.5%: six such checks pass the unbiased rule with probability ≥ 97% if it
is exactly uniform (Bonferroni), and the legacy rule still lies far outside (asserted below,
so the test can fail).
"""

from __future__ import annotations

import numpy as np
import pytest

from fl_core.backdoors import select_backdoor
from fl_core.backdoors.base import unbiased_reserve
from fl_core.pool_profile import pool_members, pool_profile, writer_sizes
from fl_core.config import config_hash, parse_config, parse_flat, flatten, read_back, result_hash
from fl_core.data import describe_data
from fl_core.data.base import labels_only
from fl_core.sampling import attacker_pool, sparse_attacker_pool

SEEDS = range(20)
REPLICATES = 1000
QUANTILES = (0.005, 0.995)


def embedded_labels(max_writers: int | None = None):
    cfg = parse_config({"data": {"source": "embedded", "max_writers": max_writers}})
    return describe_data(cfg.data).labels


def spread_subset(data, n: int):
    """Writers i·K//n (i < n) of `data`, labels only: a subset with the population's mix."""
    idx = (np.arange(n) * data.num_writers) // n
    tr, te = [], []
    for k in idx:
        tr.append(data.train_labels[data.train_slice(k)])
        te.append(data.test_labels[data.test_slice(k)])
    off = lambda parts: np.concatenate([[0], np.cumsum([len(p) for p in parts])])  # noqa: E731
    return labels_only(tuple(data.writer_ids[k] for k in idx), np.concatenate(tr), off(tr),
                       np.concatenate(te), off(te), f"spread {n}")


@pytest.fixture(scope="module")
def populations():
    full = embedded_labels()
    return {"embedded-439": full, "spread-80": spread_subset(full, 80), "first-80": embedded_labels(80)}


def cfg(seed: int, eps: float, rule: str, **attack):
    return parse_config({"seed": seed, "attack": {"kind": "pgd", "fraction": eps, "num_tasks": 5,
                                                   "pool_rule": rule, **attack},
                         "defense": {"norm_bound": 3.0}})


def pools(data, eps: float, rule: str) -> list[np.ndarray]:
    return [pool_members(cfg(s, eps, rule), data) for s in SEEDS]


def null_band(values: np.ndarray, m: int, stat) -> tuple[float, float]:
    """QUANTILES of the mean over len(SEEDS) uniform m-draws of `stat`, REPLICATES times."""
    rng = np.random.default_rng(2025)
    k = len(values)
    draws = np.argpartition(rng.random((REPLICATES * len(SEEDS), k)), m, axis=1)[:, :m]
    per = np.array([stat(values[d]) for d in draws]).reshape(REPLICATES, len(SEEDS)).mean(axis=1)
    lo, hi = np.quantile(per, QUANTILES)
    return float(lo), float(hi)


def median_and_band(data, eps, rule):
    sizes, _ = writer_sizes(data, 7)
    ps = pools(data, eps, rule)
    got = float(np.mean([np.median(sizes[p]) for p in ps]))
    return got, null_band(sizes.astype(float), len(ps[0]), np.median)


def share_and_band(data, eps, rule):
    _, has = writer_sizes(data, 7)
    ps = pools(data, eps, rule)
    got = float(np.mean([1 - has[p].mean() for p in ps]))
    return got, null_band((~has).astype(float), len(ps[0]), np.mean)


CASES = [("embedded-439", 0.033), ("spread-80", 0.033), ("spread-80", 0.1)]


@pytest.mark.parametrize("name, eps", CASES)
def test_unbiased_pool_median_size_is_that_of_random_draws(populations, name, eps):
    got, (lo, hi) = median_and_band(populations[name], eps, "unbiased")
    assert lo <= got <= hi, (name, eps, got, lo, hi)


@pytest.mark.parametrize("name, eps", [*CASES, ("first-80", 0.1)])
def test_unbiased_pool_share_without_a_seven_is_that_of_random_draws(populations, name, eps):
    got, (lo, hi) = share_and_band(populations[name], eps, "unbiased")
    assert lo <= got <= hi, (name, eps, got, lo, hi)


def test_the_legacy_rule_fails_the_same_tests_on_80_writers(populations):
    """The tests can fail: the engine before issue 25 draws small writers too often."""
    got, (lo, hi) = median_and_band(populations["spread-80"], 0.1, "legacy-eligible")
    assert got < lo, (got, lo, hi)
    got, (lo, hi) = share_and_band(populations["spread-80"], 0.1, "legacy-eligible")
    assert got > hi, (got, lo, hi)
    got, (lo, hi) = share_and_band(populations["first-80"], 0.1, "legacy-eligible")
    assert got > hi, (got, lo, hi)


def test_unbiased_reserve_golden():
    """Hand-walked: the order's first m writers, each head writer replaced by the next
    eligible writer outside the head; the ineligible ones walked past are reserved."""
    eligible = {0, 1, 2, 5, 9}.__contains__
    # first 3: 3, 0 (head), 7 → one replacement; then 5 (head, skipped), 1 (eligible): nothing passed
    assert unbiased_reserve([3, 0, 7, 5, 1, 9, 2], {0, 5}, 3, eligible) == []
    # first 2: 0 (head), 4 → one replacement; 6 and 8 are ineligible (passed), 2 is eligible
    assert unbiased_reserve([0, 4, 6, 8, 2, 1], {0}, 2, eligible) == [6, 8]
    # no head writer among the first m: nothing to replace
    assert unbiased_reserve([3, 4, 0, 6], {0}, 2, eligible) == []
    # no eligible writer left outside the head: the legacy replacement, nothing reserved
    assert unbiased_reserve([0, 4, 6, 8], {0}, 2, eligible) == []


def test_the_walk_lands_on_the_replaced_pool(populations):
    """attacker_pool (the first m unreserved writers of pool_order) equals the rule's pool
    computed directly: the first m of the order, head writers replaced by the next eligible."""
    from fl_core.backdoors.base import pool_order
    from fl_core.backdoors.semantic import select_semantic

    data = populations["spread-80"]
    _, has = writer_sizes(data, 7)
    for s in range(10):
        c = cfg(s, 0.1, "unbiased")
        order = list(pool_order(s, data.num_writers, lazy=False))
        m = 8
        sets = select_semantic(c, data)
        legacy = select_semantic(cfg(s, 0.1, "legacy-eligible"), data)
        head = set(legacy.reserved)
        want = [k for k in order[:m] if k not in head]
        rest = [k for k in order[m:] if k not in head and has[k]]
        want += rest[: m - len(want)]
        assert attacker_pool(c, data.num_writers, sets.reserved) == tuple(sorted(want))
        assert set(sets.targets) <= head <= set(sets.reserved)
        assert sets.targets == legacy.targets  # the rule changes the pool, never the targets


def test_pool_is_the_same_for_every_n_and_targets_for_every_eps(populations):
    data = populations["spread-80"]
    for s in range(5):
        ref = pool_members(cfg(s, 0.1, "unbiased", num_tasks=1), data)
        for n in (5, 10, 30, 50):
            assert np.array_equal(pool_members(cfg(s, 0.1, "unbiased", num_tasks=n), data), ref)
        t = [select_backdoor(cfg(s, eps, "unbiased", num_tasks=10), data).targets for eps in (0.033, 0.1, 0.2)]
        assert t[0] == t[1] == t[2]


def test_trigger_task_pool_is_the_same_under_both_rules(populations):
    data = populations["embedded-439"]
    for s in range(3):
        a, b = (cfg(s, 0.033, r, backdoor="trigger") for r in ("unbiased", "legacy-eligible"))
        assert np.array_equal(pool_members(a, data), pool_members(b, data))


class LazyView:
    """An eager population seen through the lazy interface (`is_lazy`), so that the lazy
    path (`_select_lazy` + `sparse_attacker_pool`) runs on a population small enough to
    check its pool's distribution."""

    lazy = True

    def __init__(self, data):
        self.data, self.name = data, "lazy view"

    @property
    def num_writers(self):
        return self.data.num_writers

    def train_counts(self):
        return np.diff(self.data.train_offsets)

    def writer_train(self, k):
        return self.data.writer_train(k)

    def writer_test(self, k):
        return self.data.writer_test(k)

    def writer_train_labels(self, k):
        return self.data.train_labels[self.data.train_slice(k)]


def toy_population():
    """12 writers, the first 4 without a 7."""
    train = [np.array([7, 0] if k >= 4 else [0, 0]) for k in range(12)]
    off = np.concatenate([[0], np.cumsum([len(t) for t in train])])
    return labels_only(tuple(f"w{k:02d}" for k in range(12)), np.concatenate(train), off,
                       np.zeros(12, np.int64), np.arange(13))


@pytest.mark.parametrize("lazy", [False, True])
def test_each_writer_is_drawn_with_probability_m_over_k(lazy):
    """Exactness on a toy population of 12 writers, 4 of them without a 7, R = 5 reserved, a
    pool of 3: over 3000 seeds each writer is in the pool 3/12 of the time (binomial sd
    √(3000·¼·¾) ≈ 24 draws, bound 5 sd); the legacy rule draws the 4 ineligible writers at
    3/7 (nearly twice as often), which the same bound rejects. The eager path and the lazy
    one (`_select_lazy`, `sparse_attacker_pool`: another order, the same rule)."""
    data = toy_population()
    if lazy:
        data = LazyView(data)
    n = 3000
    for rule, ok in (("unbiased", True), ("legacy-eligible", False)):
        counts = np.zeros(12)
        for s in range(n):
            c = cfg(s, 0.25, rule, num_tasks=2, max_tasks=5)
            reserved = select_backdoor(c, data).reserved
            pool = sparse_attacker_pool(c, 12, reserved) if lazy else attacker_pool(c, 12, reserved)
            assert len(pool) == 3 and not set(pool) & set(reserved)
            counts[list(pool)] += 1
        within = np.all(np.abs(counts - n * 3 / 12) <= 5 * np.sqrt(n * 0.25 * 0.75))
        assert within == ok, (rule, counts)


def test_pool_profile_reports_pool_and_population(populations):
    data = populations["spread-80"]
    p = pool_profile(cfg(0, 0.1, "unbiased"), data)
    sizes, has = writer_sizes(data, 7)
    assert p.population.writers == 80 and p.pool.writers == 8
    assert (p.population.min, p.population.max) == (int(sizes.min()), int(sizes.max()))
    assert p.population.median == float(np.median(sizes))
    assert p.population.without_source == pytest.approx(1 - has.mean())
    pool = pool_members(cfg(0, 0.1, "unbiased"), data)
    assert p.pool.median == float(np.median(sizes[pool]))
    assert pool_profile(parse_config({}), data) is None


# ----------------------------------------------------------------------------- keys
def test_keys_change_only_for_attacked_configs_and_legacy_keeps_the_old_ones():
    """`legacy-eligible` is hash-neutral (old trial keys, checkpoints and sweeps are found and
    reproduced); `unbiased` (default) gives attacked configs new keys; without an attack the
    key is the same whatever the rule."""
    attacked = {"attack": {"kind": "pgd", "fraction": 0.1}, "defense": {"norm_bound": 3.0}}
    new = parse_config(attacked)
    legacy = parse_config({**attacked, "attack": {**attacked["attack"], "pool_rule": "legacy-eligible"}})
    assert new.attack.pool_rule == "unbiased"
    assert config_hash(new) != config_hash(legacy) and result_hash(new) != result_hash(legacy)
    flat = {k: v for k, v in flatten(legacy).items() if k != "attack.pool_rule"}
    import hashlib
    import json

    from fl_core.config import HASH_NEUTRAL_DEFAULTS, NEVER_HASHED

    before = {k: v for k, v in flat.items() if k not in NEVER_HASHED
              and not (k in HASH_NEUTRAL_DEFAULTS and v == HASH_NEUTRAL_DEFAULTS[k])}
    assert config_hash(legacy) == hashlib.sha256(
        json.dumps(before, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    clean = [parse_config({"attack": {"pool_rule": r}}) for r in ("unbiased", "legacy-eligible")]
    assert config_hash(clean[0]) == config_hash(clean[1]) == config_hash(parse_config({}))


def test_configs_written_before_the_key_read_back_as_legacy():
    """A flat view or a dump written by the engine before issue 25 lacks the key: read back,
    it is that engine's rule and hashes to its old key; a user's config takes the default."""
    attacked = {"attack": {"kind": "pgd", "fraction": 0.1}, "defense": {"norm_bound": 3.0}}
    old_dump = parse_config(attacked).model_dump(mode="json")
    del old_dump["attack"]["pool_rule"]
    assert read_back(old_dump).attack.pool_rule == "legacy-eligible"
    flat = flatten(parse_config(attacked))
    del flat["attack.pool_rule"]
    assert parse_flat(flat).attack.pool_rule == "legacy-eligible"
    assert parse_flat(flatten(parse_config(attacked))).attack.pool_rule == "unbiased"
    assert parse_config(attacked).attack.pool_rule == "unbiased"


def test_a_bad_pool_rule_names_the_key_and_the_values():
    from fl_core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"attack\.pool_rule.*unbiased.*legacy-eligible"):
        parse_config({"attack": {"kind": "pgd", "fraction": 0.1, "pool_rule": "random"}, "defense": {"norm_bound": 3.0}})
