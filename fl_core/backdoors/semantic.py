"""`semantic` (Sun et al. 2019 §3, the default): N target writers' 7s should be read as 1s.

D_mal is all the target writers' source-label train images relabelled to the target label
(`select_semantic` below selects the targets and reserves the writers that are never
attackers); every attacker uses the same D_mal, whatever its own data. `backdoor_acc` is
measured on D_mal itself (the reference code's figure), `backdoor_acc_heldout` on the
targets' held-out source-label test images. The main task without the backdoor's label
(`main_acc_clean`) drops the source-label rows; `collateral_rate` is the share of the OTHER
writers' source-label images predicted as the target label (the backdoor's spill-over).
"""

from __future__ import annotations

import numpy as np

from fl_core.backdoors.base import (
    BackdoorSets,
    BackdoorSpec,
    EvalSets,
    num_attackers,
    pool_order,
    register,
    reserved_count,
    unbiased_reserve,
)
from fl_core.config import SimulationConfig
from fl_core.data.base import FederatedData
from fl_core.data.population import WriterPopulation, gather, is_lazy, seeded_writers
from fl_core.errors import ConfigError
from fl_core.rng import Stream, numpy_rng

# Target selection (the semantic task's own; it lived in fl_core/data/backdoor.py before):
#
# The semantic backdoor task's writers (Sun et al. 2019 §3; the plug-in is
# `fl_core.backdoors.semantic`): N target writers; D_mal is all their train
# images of the source label (7), relabelled to the target label (1).
#
# The target order is one seeded permutation of the writers that own a source-label image;
# the N targets are its first N, and its first R = min(attack.max_tasks, eligible, K − εK)
# writers are reserved: never attackers. So N = 10, 20, 30, 50 see nested target sets and the
# SAME attacker pool (`fl_core.sampling.attacker_pool` draws from the unreserved writers), and
# the targets do not depend on ε.
#
# A lazy population (K up to 10^7, `fl_core.data.population`) cannot list its eligible
# writers; its target order is the seeded order of distinct writers `seeded_writers(seed,
# TARGET_ORDER_KEY, K)` filtered to those with a source-label train image, walked until R
# are found (R = min(attack.max_tasks, K − εK); fewer only if the walk runs out of writers).
# Only the walked writers' labels are made, and only the N targets' pixels.
#
# The reserved head holds only eligible writers, so drawing the pool among the writers
# outside it (`attack.pool_rule: legacy-eligible`, the engine before issue 25) over-draws the
# writers without a source-label image, mostly tiny ones: on 80 of the embedded writers, R = 50,
# 37–43% of the pool owned no 7 against 16% of the population (docs/REPRODUCTION.md §4c).
# `attack.pool_rule: unbiased` (the default)
# also reserves the ineligible writers that `unbiased_reserve` walks past, which makes the pool
# a uniform draw from the whole population; the targets are the same under both rules.
#
# Target writers stay in the population as benign clients with correct labels, so honest
# training keeps pulling the model back. Backdoor accuracy is measured on D_mal itself (the
# reference code's figure) and on the target writers' held-out test images of the source
# label (the more honest figure).

# POPULATION stream keys of a lazy population (eager ones use 0: target order, 1: attacker
# pool, 2: eval subsample).
TARGET_ORDER_KEY = 3


class Semantic:
    def __init__(self, config, data, sets):
        self.source = config.attack.source_label
        self.target = config.attack.target_label
        self.targets = np.asarray(sets.targets, np.int64)
        self.mal_pixels, self.held_pixels = backdoor_pixels(data, sets)
        self._mal = None  # D_mal on the device, made on first use

    def malicious(self, own):
        import torch

        from fl_core.training import ClientData

        if self._mal is None or self._mal.pixels.device != own.pixels.device:
            px = torch.from_numpy(np.ascontiguousarray(self.mal_pixels)).to(own.pixels.device)
            self._mal = ClientData(px, torch.full((len(px),), self.target, dtype=own.labels.dtype, device=px.device))
        return self._mal

    def eval_sets(self, pixels, labels, writer):
        is_src = labels == self.source
        return EvalSets(self.mal_pixels, self.held_pixels, ~is_src, is_src & ~np.isin(writer, self.targets))


def select_semantic(config: SimulationConfig, data: WriterPopulation) -> BackdoorSets:
    """Draw the N target writers among writers that own ≥1 source-label train image."""
    if is_lazy(data):
        return _select_lazy(config, data)
    assert isinstance(data, FederatedData)
    src, n = config.attack.source_label, config.attack.num_tasks
    is_src = data.train_labels == src
    counts = np.add.reduceat(is_src.astype(np.int64), data.train_offsets[:-1]) if len(is_src) else np.zeros(0)
    # reduceat misreads empty writers (offset repeated); they own no rows anyway.
    counts = np.where(np.diff(data.train_offsets) > 0, counts, 0)
    eligible = np.flatnonzero(counts > 0)
    if n > len(eligible):
        raise ConfigError(
            "attack.num_tasks", n,
            f"at most {len(eligible)}: writers with a train image of label {src} in {data.name or 'the data'}",
        )
    order = numpy_rng(config.seed, Stream.POPULATION, 0).permutation(eligible)
    r = reserved_count(config, data.num_writers, len(eligible))
    if n > r:
        raise ConfigError(
            "attack.num_tasks", n,
            f"at most {r}: the first R = min(attack.max_tasks, eligible writers, K − ε·K) writers of "
            f"the target order are kept out of the attacker pool (K = {data.num_writers}, "
            f"{len(eligible)} eligible)",
        )
    targets = np.sort(order[:n])
    train_rows = np.concatenate(
        [np.flatnonzero(data.train_labels[data.train_slice(k)] == src) + data.train_offsets[k] for k in targets]
    )
    held = [
        np.flatnonzero(data.test_labels[data.test_slice(k)] == src) + data.test_offsets[k] for k in targets
    ]
    heldout_rows = np.concatenate(held) if held else np.zeros(0, np.int64)
    head = [int(t) for t in order[:r]]
    reserved = head + _pool_reserve(config, data.num_writers, head, lambda k: bool(counts[k] > 0), lazy=False)
    return BackdoorSets(
        tuple(int(t) for t in targets), tuple(sorted(reserved)), train_rows.astype(np.int64), heldout_rows.astype(np.int64))


def _pool_reserve(config: SimulationConfig, num_writers: int, head: list[int], eligible, lazy: bool) -> list[int]:
    """What `attack.pool_rule` reserves besides the head: nothing (legacy-eligible), or the
    ineligible writers the unbiased pool's walk passes over (`unbiased_reserve`)."""
    if config.attack.pool_rule == "legacy-eligible":
        return []
    m = num_attackers(config, num_writers)
    return unbiased_reserve(pool_order(config.seed, num_writers, lazy), set(head), m, eligible)


def _select_lazy(config: SimulationConfig, data: WriterPopulation) -> BackdoorSets:
    src, n, k_all = config.attack.source_label, config.attack.num_tasks, data.num_writers
    cap = max(0, min(config.attack.max_tasks, k_all - num_attackers(config, k_all)))
    order: list[int] = []
    if cap:
        for k in seeded_writers(config.seed, TARGET_ORDER_KEY, k_all):
            if np.any(data.writer_train_labels(k) == src):
                order.append(k)
                if len(order) == cap:
                    break
    if n > len(order):
        raise ConfigError(
            "attack.num_tasks", n,
            f"at most {len(order)}: the first R = min(attack.max_tasks, eligible writers, K − ε·K) writers "
            f"with a train image of label {src} in the target order are kept out of the attacker pool "
            f"(K = {k_all}, {data.name or 'the data'})",
        )
    targets = np.sort(np.asarray(order[:n], np.int64))
    _, train_labels, _ = gather(data, targets, "train")
    _, test_labels, _ = gather(data, targets, "test")
    extra = _pool_reserve(config, k_all, order, lambda k: bool(np.any(data.writer_train_labels(k) == src)), lazy=True)
    return BackdoorSets(
        tuple(int(t) for t in targets), tuple(sorted(order + extra)),
        np.flatnonzero(train_labels == src).astype(np.int64), np.flatnonzero(test_labels == src).astype(np.int64),
    )


def backdoor_pixels(data: WriterPopulation, sets: BackdoorSets) -> tuple[np.ndarray, np.ndarray]:
    """(D_mal pixels, the targets' held-out source-label test pixels), uint8 (n, 28, 28)."""
    if not is_lazy(data):
        assert isinstance(data, FederatedData)
        return data.train_pixels[sets.train_rows], data.test_pixels[sets.heldout_rows]
    train_px = gather(data, sets.targets, "train")[0]
    test_px = gather(data, sets.targets, "test")[0]
    return train_px[sets.train_rows], test_px[sets.heldout_rows]


register(BackdoorSpec("semantic", "semantic (target writers' 7s → 1)", select_semantic,
                      lambda params, config, data, sets: Semantic(config, data, sets)))
