"""Main-task and backdoor accuracy of a global model.

Main task: all writers' test images (or a fixed random subset drawn once from the
POPULATION stream). A lazy population (`fl_core.data.population`, K up to 10^7) has no
test split in memory: its main-task set is the test images of the first writers of the
seeded order `seeded_writers(seed, EVAL_WRITERS_KEY, K)`, taken whole until
`fl.eval_subsample` images (LAZY_EVAL_IMAGES when unset) are reached, then cut to exactly
that many; collateral is measured on those writers' source-label images (targets excluded). Backdoor: the fraction of D_mal (the attacker's own backdoor images,
the reference code's figure) and of the target writers' held-out source-label test images
classified as the target label. An attack that learns its own trigger (A3FL, IBA:
`fl_core.attacks.base.LearnedTrigger`; on the trigger task) is measured with the trigger it
holds at that round: `backdoor_acc` stamps the `main_acc_clean` rows (the test images whose
label is not the target label) with `stamp` and the state in force.

A semantic backdoor spreads: the attacked model also turns OTHER writers' source-label images
into the target label (measured up to 98% on real writers, `../shared/paper/NOTES.md`), which
`main_acc` counts only as a 10% slice of the test set. So two more figures, on the same test
rows as `main_acc`:
- `main_acc_clean`: accuracy on the test images whose label is not the source label (the
  main task with the backdoor's own label taken out);
- `collateral_rate`: the share of NON-target writers' source-label test images predicted as
  the target label (the backdoor's spill-over; the unattacked model's value is its baseline).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from fl_core.attacks.base import learned_trigger
from fl_core.training import to_input, torch_threads
from fl_core.config import SimulationConfig
from fl_core.backdoors import build_task
from fl_core.backdoors.base import BackdoorSets
from fl_core.data.population import WriterPopulation, is_lazy, seeded_writers
from fl_core.models import CNN
from fl_core.params import set_flat
from fl_core.rng import Stream, numpy_rng

EVAL_BATCH = 1024
EVAL_WRITERS_KEY = 5       # POPULATION key of a lazy population's evaluation writers
LAZY_EVAL_IMAGES = 10_000  # lazy population, fl.eval_subsample unset: main-task images


def main_test_set(config: SimulationConfig, data: WriterPopulation) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pixels, labels, writer of each row) of the main-task test set (module docstring)."""
    n = config.fl.eval_subsample
    if is_lazy(data):
        n = n if n is not None else LAZY_EVAL_IMAGES
        parts, owners, total = [], [], 0
        for k in seeded_writers(config.seed, EVAL_WRITERS_KEY, data.num_writers):
            if total >= n:
                break
            px, lb = data.writer_test(k)  # kept here: asking again could render it twice
            parts.append((px, lb))
            owners.append(np.full(len(lb), k, np.int64))
            total += len(lb)
        if not parts:
            return np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.int64), np.zeros(0, np.int64)
        px = np.concatenate([p for p, _ in parts])
        lb = np.concatenate([lb for _, lb in parts]).astype(np.int64)
        owner = np.concatenate(owners)
        return px[:n], lb[:n], owner[:n]
    rows = np.arange(len(data.test_labels))
    if n is not None and n < len(rows):
        rows = np.sort(numpy_rng(config.seed, Stream.POPULATION, 2).choice(rows, size=n, replace=False))
    writer = np.repeat(np.arange(data.num_writers), np.diff(data.test_offsets))[rows]
    return data.test_pixels[rows], data.test_labels[rows], writer


class Evaluator:
    def __init__(self, config: SimulationConfig, data: WriterPopulation, backdoor: BackdoorSets, device: torch.device,
                 attack=None):
        self.device = device
        self.target = config.attack.target_label
        self.threads = config.fl.threads
        pixels, labels, writer = main_test_set(config, data)
        self.test_x = torch.from_numpy(np.ascontiguousarray(pixels)).to(device)
        self.test_y = torch.from_numpy(np.ascontiguousarray(labels)).to(device)
        sets = build_task(config, data, backdoor).eval_sets(pixels, labels, writer)
        self.clean_mask = torch.from_numpy(np.asarray(sets.clean, bool)).to(device)
        self.collateral_mask = torch.from_numpy(np.asarray(sets.collateral, bool)).to(device)
        self.mal_x = torch.from_numpy(np.ascontiguousarray(sets.backdoor)).to(device)
        self.held_x = None if sets.heldout is None else torch.from_numpy(np.ascontiguousarray(sets.heldout)).to(device)
        self.trigger = learned_trigger(attack)  # its own trigger replaces the task's pattern
        self.model = CNN().to(device)

    @torch.no_grad()
    def _predict(self, pixels: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
        preds, loss_sum = [], 0.0
        for s in range(0, len(pixels), EVAL_BATCH):
            logits = self.model(to_input(pixels[s : s + EVAL_BATCH]))
            preds.append(logits.argmax(1))
            if labels is not None:
                loss_sum += float(F.cross_entropy(logits, labels[s : s + EVAL_BATCH], reduction="sum"))
        return (torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long, device=self.device)), loss_sum

    def _rate(self, pixels: torch.Tensor | None) -> float | None:
        if pixels is None or len(pixels) == 0:
            return None
        preds, _ = self._predict(pixels)
        return float((preds == self.target).double().mean())

    def evaluate(self, params: torch.Tensor, attack_state: dict | None = None) -> dict:
        """The metrics of the module docstring for weights `params`; `attack_state` is the
        learned trigger in force (`SimulationState.attack_state`), for an attack that has one."""
        with torch_threads(self.threads):
            return self._evaluate(params, attack_state or {})

    def backdoor_inputs(self, attack_state: dict | None = None) -> torch.Tensor:
        """The backdoor test inputs: the task's own, or, for an attack that learns its
        trigger, the clean test images stamped with the trigger in force (`attack_state`).
        One place, so that every backdoor metric (here and CRFL's smoothed one) uses it."""
        if self.trigger is None:
            return self.mal_x
        return self.trigger.stamp(self.test_x[self.clean_mask], attack_state or {})

    def _evaluate(self, params: torch.Tensor, attack_state: dict) -> dict:
        mal_x = self.backdoor_inputs(attack_state)
        set_flat(self.model, params.to(self.device))
        self.model.eval()
        preds, loss_sum = self._predict(self.test_x, self.test_y)
        n = max(len(self.test_y), 1)
        correct = preds == self.test_y
        return {
            "main_acc": float(correct.double().sum()) / n,
            "main_acc_clean": _mean(correct, self.clean_mask),
            "collateral_rate": _mean(preds == self.target, self.collateral_mask),
            "main_loss": loss_sum / n,
            "backdoor_acc": self._rate(mal_x),
            "backdoor_acc_heldout": self._rate(self.held_x),
        }


def _mean(hits: torch.Tensor, mask: torch.Tensor) -> float | None:
    """Share of `hits` among the rows in `mask`; None when the mask is empty."""
    n = int(mask.sum())
    return float(hits[mask].double().sum()) / n if n else None
