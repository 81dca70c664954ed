"""Who trains and who attacks in each round: pure functions of (config, round_idx).

The attacker pool is a population property (Sun et al. 2019 §2): round(ε·K) writers, fixed
for the run, never re-drawn per round, never a target writer, and the same for every number
of backdoor tasks N (drawn outside the reserved head of the target order, see
`fl_core.backdoors.semantic`); under `attack.pool_rule: unbiased` (default) it is a uniform
draw from the whole population, whatever the writers' sizes (issue 25).
- random sampling: the cohort is drawn from all K writers; pool members in it attack, so
  the count per round is hypergeometric(K, εK, C·K);
- attackers act from `attack.start_round` up to (not including) `attack.stop_round`;
- fixed frequency: exactly one attacker every f = 1/(ε·C·K) rounds (or `attack.frequency`),
  in the rounds where (round − start_round) % f == f // 2 (the reference code's phase),
  put in place of one sampled client; every other cohort member is benign.
- every round: exactly m = round(ε·C·K) pool members, drawn per round, attack in every
  round (the Byzantine setting: f of n clients); one already sampled keeps its slot, the
  others take the slots of sampled clients that are not among the m.
Cohorts are sampled uniformly without replacement (paper) or with replacement (reference code).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from fl_core.attacks import ATTACKS
from fl_core.backdoors.base import LAZY_POOL_KEY, POOL_KEY, pool_order
from fl_core.config import SimulationConfig
from fl_core.errors import ConfigError
from fl_core.rng import Stream, derive_seed, numpy_rng
from fl_core.types import ClientTask, RoundPlan


@dataclass(frozen=True)
class Population:
    """Fixed per run. `weights[k]` is n_k (a sequence or an int64 array of K ints);
    `attackers` is the sorted attacker pool (a tuple or an int64 array)."""

    num_writers: int
    weights: Sequence[int] | np.ndarray
    attackers: Sequence[int] | np.ndarray


def attacker_pool(config: SimulationConfig, num_writers: int, reserved: tuple[int, ...]) -> tuple[int, ...]:
    """round(ε·K) writers drawn once from the POPULATION stream, never a `reserved` one
    (`BackdoorSets.reserved`: the targets of every N ≤ attack.max_tasks and what the pool
    rule adds), so the pool is the same for every number of backdoor tasks N.

    `attack.pool_rule: unbiased`: the first m unreserved writers of `pool_order` (a seeded
    permutation of all K); with the backdoor task's reserve (`unbiased_reserve`) that is a
    uniform draw from the whole population. `legacy-eligible`: a permutation of the unreserved
    writers, the engine before issue 25 (biased toward small writers, see
    `fl_core.backdoors.semantic`). Without reserved writers (the trigger task) both rules
    give the same pool."""
    a = config.attack
    if a.kind == "none":
        return ()
    m = int(round(a.fraction * num_writers))
    if m < 1:
        raise ConfigError(
            "attack.fraction", a.fraction,
            f"at least {1 / num_writers:.4g} so that ε·K ≥ 1 attacker with K = {num_writers} writers",
        )
    candidates = np.setdiff1d(np.arange(num_writers), np.asarray(reserved, np.int64))
    if m > len(candidates):
        raise ConfigError("attack.fraction", a.fraction, f"at most {len(candidates) / num_writers:.4g} (non-target writers)")
    if a.pool_rule == "legacy-eligible":
        rng = numpy_rng(config.seed, Stream.POPULATION, POOL_KEY)
        return tuple(int(i) for i in np.sort(rng.permutation(candidates)[:m]))
    return tuple(sorted(_first_unreserved(pool_order(config.seed, num_writers, lazy=False), reserved, m)))


def _first_unreserved(order, reserved: Sequence[int], m: int) -> list[int]:
    skip = set(int(r) for r in reserved)
    pool: list[int] = []
    for k in order:
        if k not in skip:
            pool.append(k)
            if len(pool) == m:
                break
    return pool


ATTACKER_POOL_KEY = LAZY_POOL_KEY  # POPULATION key of a lazy population's attacker pool


def sparse_attacker_pool(config: SimulationConfig, num_writers: int, reserved: Sequence[int]) -> np.ndarray:
    """`attacker_pool` for a lazy population (K up to 10^7): the first round(ε·K) writers
    not `reserved` of the seeded order `seeded_writers(seed, ATTACKER_POOL_KEY, K)`, as a
    sorted int64 array; O(εK) memory, no arange or permutation of K. The same rules
    (≥ 1 attacker, never a reserved writer, independent of N) with another draw. Both pool
    rules walk this order; they differ in `reserved` only (`fl_core.backdoors.semantic`)."""
    a = config.attack
    if a.kind == "none":
        return np.zeros(0, np.int64)
    m = int(round(a.fraction * num_writers))
    if m < 1:
        raise ConfigError(
            "attack.fraction", a.fraction,
            f"at least {1 / num_writers:.4g} so that ε·K ≥ 1 attacker with K = {num_writers} writers",
        )
    skip = set(int(r) for r in reserved)
    if m > num_writers - len(skip):
        raise ConfigError("attack.fraction", a.fraction, f"at most {(num_writers - len(skip)) / num_writers:.4g} (non-target writers)")
    return np.sort(np.asarray(_first_unreserved(pool_order(config.seed, num_writers, lazy=True), reserved, m), np.int64))


def attack_frequency(config: SimulationConfig) -> int:
    """f: explicit `attack.frequency`, else round(1/(ε·C·K)) but at least 1."""
    a = config.attack
    if a.frequency is not None:
        return a.frequency
    return max(1, int(round(1.0 / (a.fraction * config.fl.clients_per_round))))


def attack_window(config: SimulationConfig, round_idx: int) -> bool:
    """Attackers act in rounds start_round ≤ t < stop_round (stop_round null: to the end)."""
    a = config.attack
    return a.kind != "none" and a.start_round <= round_idx and (a.stop_round is None or round_idx < a.stop_round)


def is_fixed_frequency_round(config: SimulationConfig, round_idx: int) -> bool:
    a = config.attack
    if a.schedule != "fixed-frequency" or not attack_window(config, round_idx):
        return False
    f = attack_frequency(config)
    return (round_idx - a.start_round) % f == f // 2


def sample_cohort(config: SimulationConfig, num_writers: int, round_idx: int) -> np.ndarray:
    """C·K writer indices for the round, in draw order."""
    ck = config.fl.clients_per_round
    rng = numpy_rng(config.seed, Stream.SAMPLING, round_idx)
    if config.fl.sampling == "with-replacement":
        return rng.integers(0, num_writers, size=ck)
    if ck > num_writers:
        raise ConfigError(
            "fl.clients_per_round", ck, f"at most K = {num_writers} writers (sampling without replacement)"
        )
    return rng.choice(num_writers, size=ck, replace=False)


def boost_factor(config: SimulationConfig, pop: Population, cohort: np.ndarray, attacker_slots: list[int]) -> list[float]:
    """β per attacker so that together their weighted contribution equals (w* − w_t)/η.

    Weighted FedAvg: β_a = Σ_{k∈S} n_k / (η · m · n_a). Uniform mean: β_a = |S| / (η · m).
    m attackers split the total evenly. `attack.boost` overrides.
    """
    m = len(attacker_slots)
    if m == 0:
        return []
    if config.attack.boost is not None:
        return [config.attack.boost] * m
    eta = config.fl.server_lr
    if config.uniform_weighting:
        return [len(cohort) / (eta * m)] * m
    total = float(sum(int(pop.weights[int(k)]) for k in cohort))
    return [total / (eta * m * int(pop.weights[int(cohort[s])])) for s in attacker_slots]


def attackers_per_round(config: SimulationConfig) -> int:
    """m = round(ε·C·K), the attackers of every round under `every-round` (≥ 1, validated)."""
    return int(round(config.attack.fraction * config.fl.clients_per_round))


def place_every_round(config: SimulationConfig, pop: Population, cohort: np.ndarray,
                      round_idx: int) -> tuple[np.ndarray, list[int]]:
    """(cohort, sorted attacker slots) with m pool members drawn from the round's own stream
    (Stream.ATTACK, keys (round, 1): fixed frequency draws (round,)). A drawn member already
    in the cohort attacks from its first slot; the rest replace sampled clients that are
    not drawn, the slots chosen by the same stream."""
    m = attackers_per_round(config)
    pool = np.asarray(pop.attackers, np.int64)
    if m > len(pool):
        raise ConfigError("attack.fraction", config.attack.fraction,
                          f"a pool of at least round(ε·C·K) = {m} writers; it holds {len(pool)}")
    rng = numpy_rng(config.seed, Stream.ATTACK, round_idx, 1)
    who = np.sort(rng.choice(pool, size=m, replace=False))
    cohort = cohort.copy()
    slots: list[int] = []
    missing: list[int] = []
    for k in who:
        present = np.flatnonzero(cohort == k)
        (slots.append(int(present[0])) if len(present) else missing.append(int(k)))
    drawn = set(who.tolist())
    free = [s for s in rng.permutation(len(cohort)).tolist() if int(cohort[s]) not in drawn]
    if len(free) < len(missing):  # with replacement, a drawn writer may fill several slots
        raise ConfigError("fl.clients_per_round", config.fl.clients_per_round,
                          f"more than round(ε·C·K) = {m} (round {round_idx} has no free slot for every attacker)")
    for k, s in zip(missing, free):
        cohort[s] = k
        slots.append(int(s))
    return cohort, sorted(slots)


def plan_round(config: SimulationConfig, pop: Population, round_idx: int) -> RoundPlan:
    """The cohort, the roles, the per-task seeds and β for round `round_idx`."""
    cohort = sample_cohort(config, pop.num_writers, round_idx)
    a = config.attack
    attacker_slots: list[int] = []
    if attack_window(config, round_idx):
        if a.schedule == "random-sampling":
            # vectorised membership: the pool may hold εK = 10^4 writers at K = 10^7
            attacker_slots = np.flatnonzero(np.isin(cohort, np.asarray(pop.attackers, np.int64))).tolist()
        elif a.schedule == "every-round":
            cohort, attacker_slots = place_every_round(config, pop, cohort, round_idx)
        elif is_fixed_frequency_round(config, round_idx):
            rng = numpy_rng(config.seed, Stream.ATTACK, round_idx)
            who = int(pop.attackers[int(rng.integers(len(pop.attackers)))])
            present = np.flatnonzero(cohort == who)
            slot = int(present[0]) if len(present) else int(rng.integers(len(cohort)))
            cohort = cohort.copy()
            cohort[slot] = who
            attacker_slots = [slot]
    betas = dict(zip(attacker_slots, boost_factor(config, pop, cohort, attacker_slots)))
    spec = ATTACKS[a.kind]  # the attack plans its projection radius (M/β for PGD)
    pool = np.asarray(pop.attackers, np.int64)
    seen: dict[int, int] = {}
    tasks = []
    for s, k in enumerate(cohort):
        k = int(k)
        dup = seen.get(k, 0)
        seen[k] = dup + 1
        if s in betas:
            beta = betas[s]
            radius = spec.radius(config, beta)
            seed = derive_seed(config.seed, Stream.ATTACK, round_idx, k, dup)
            rank = int(np.searchsorted(pool, k))
            tasks.append(ClientTask(round_idx, k, dup, "attacker", seed, beta, radius, rank))
        else:
            seed = derive_seed(config.seed, Stream.CLIENT, round_idx, k, dup)
            tasks.append(ClientTask(round_idx, k, dup, "benign", seed))
    return RoundPlan(round_idx, tuple(tasks))
