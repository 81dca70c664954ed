"""The backdoor task (Sun et al. 2019 §3): N target writers; D_mal is all their train
images of the source label (7), relabelled to the target label (1).

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
        train_rows: D_mal, rows of `train_pixels` (label them `target_label`).
        heldout_rows: rows of `test_pixels` of the target writers with the source label.
    """

    targets: tuple[int, ...]
    train_rows: np.ndarray
    heldout_rows: np.ndarray


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
    rng = numpy_rng(config.seed, Stream.POPULATION, 0)
    targets = np.sort(rng.permutation(eligible)[:n])
    train_rows = np.concatenate(
        [np.flatnonzero(data.train_labels[data.train_slice(k)] == src) + data.train_offsets[k] for k in targets]
    )
    held = [
        np.flatnonzero(data.test_labels[data.test_slice(k)] == src) + data.test_offsets[k] for k in targets
    ]
    heldout_rows = np.concatenate(held) if held else np.zeros(0, np.int64)
    return BackdoorSets(tuple(int(t) for t in targets), train_rows.astype(np.int64), heldout_rows.astype(np.int64))
