"""The attacker pool's writers beside the population's (issue 25): how many train images a
pool member has, and how many pool members own no source-label image, so that `fl-sweep
validate` and the report show whether the pool looks like a random draw of the population
(`attack.pool_rule: unbiased`) or leans toward small writers (`legacy-eligible`).

Computed with the engine's own `select_backdoor` and `attacker_pool` on the writers' labels
(a labels-only `FederatedData`, `fl_core.data.describe_data`): no pixels, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SizeProfile:
    """Train images per writer of a set of writers.

    Attributes:
        writers: how many writers.
        min, median, max: their train images.
        without_source: the share of them without a train image of the source label.
    """

    writers: int
    min: int
    median: float
    max: int
    without_source: float


@dataclass(frozen=True)
class PoolProfile:
    """One run's attacker pool (seed `seed`) beside its population."""

    seed: int
    pool: SizeProfile
    population: SizeProfile


def writer_sizes(data, source_label: int) -> tuple[np.ndarray, np.ndarray]:
    """(train images per writer, whether each owns a `source_label` train image) of an eager
    population (a `FederatedData`, labels-only or not)."""
    sizes = np.diff(data.train_offsets).astype(np.int64)
    is_src = (data.train_labels == source_label).astype(np.int64)
    cum = np.concatenate([[0], np.cumsum(is_src)])
    has = (cum[data.train_offsets[1:]] - cum[data.train_offsets[:-1]]) > 0
    return sizes, has


def size_profile(sizes: np.ndarray, has_source: np.ndarray) -> SizeProfile:
    if len(sizes) == 0:
        return SizeProfile(0, 0, float("nan"), 0, float("nan"))
    return SizeProfile(len(sizes), int(sizes.min()), float(np.median(sizes)), int(sizes.max()),
                       float(1.0 - has_source.mean()))


def pool_members(config, data) -> np.ndarray:
    """The attacker pool the engine draws for `config` on the eager population `data`."""
    from fl_core.backdoors import select_backdoor
    from fl_core.sampling import attacker_pool

    reserved = select_backdoor(config, data).reserved
    return np.asarray(attacker_pool(config, data.num_writers, reserved), np.int64)


def pool_profile(config, data) -> PoolProfile | None:
    """The pool's and the population's `SizeProfile` for `config` on `data` (eager; a
    labels-only summary will do); None without an attack."""
    if config.attack.kind == "none":
        return None
    sizes, has = writer_sizes(data, config.attack.source_label)
    pool = pool_members(config, data)
    return PoolProfile(config.seed, size_profile(sizes[pool], has[pool]), size_profile(sizes, has))


def pool_key(config) -> tuple:
    """What the pool depends on besides the data: runs with equal keys share their pool (the
    number of tasks N does not change it, by design)."""
    a = config.attack
    return (config.seed, a.fraction, a.max_tasks, a.source_label, a.backdoor, a.pool_rule)
