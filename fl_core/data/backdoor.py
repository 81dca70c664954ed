"""The backdoor task (Sun et al. 2019 §3): N target writers; D_mal is all their train
images of the source label (7), relabelled to the target label (1).

The target order is one seeded permutation of the writers that own a source-label image;
the N targets are its first N, and its first R = min(attack.max_tasks, eligible, K − εK)
writers are reserved: never attackers. So N = 10, 20, 30, 50 see nested target sets and the
SAME attacker pool (`fl_core.sampling.attacker_pool` draws from the unreserved writers), and
the targets do not depend on ε.

Target writers stay in the population as benign clients with correct labels, so honest
training keeps pulling the model back. Backdoor accuracy is measured on D_mal itself (the
reference code's figure) and on the target writers' held-out test images of the source
label (the more honest figure).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fl_core.config import SimulationConfig
from fl_core.data.base import FederatedData
from fl_core.errors import ConfigError
from fl_core.rng import Stream, numpy_rng


@dataclass(frozen=True)
class BackdoorSets:
    """Row indices into FederatedData's arrays.

    Attributes:
        targets: sorted writer indices of the N target writers.
        reserved: sorted writer indices that are never attackers (the first R of the target
            order; includes `targets`).
        train_rows: D_mal, rows of `train_pixels` (label them `target_label`).
        heldout_rows: rows of `test_pixels` of the target writers with the source label.
    """

    targets: tuple[int, ...]
    reserved: tuple[int, ...]
    train_rows: np.ndarray
    heldout_rows: np.ndarray


def num_attackers(config: SimulationConfig, num_writers: int) -> int:
    """m = round(ε·K), the attacker pool's size (0 without an attack)."""
    a = config.attack
    return 0 if a.kind == "none" else int(round(a.fraction * num_writers))


def reserved_count(config: SimulationConfig, num_writers: int, eligible: int) -> int:
    """R = min(attack.max_tasks, eligible writers, K − m): never more than leaves room for m
    attackers, so small populations still work; R depends on ε, K and max_tasks, never on N."""
    return max(0, min(config.attack.max_tasks, eligible, num_writers - num_attackers(config, num_writers)))


def select_backdoor(config: SimulationConfig, data: FederatedData) -> BackdoorSets:
    """Draw the N target writers among writers that own ≥1 source-label train image."""
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
    return BackdoorSets(
        tuple(int(t) for t in targets), tuple(int(t) for t in np.sort(order[:r])), train_rows.astype(np.int64), heldout_rows.astype(np.int64))
