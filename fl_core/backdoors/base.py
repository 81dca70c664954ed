"""The backdoor-task plug-in shape (`attack.backdoor`): what the attacker wants the model to
learn, which images it poisons with, and how the result is measured.

A task has two halves. `select` (once per run, on the population) decides which writers are
targets and which are reserved (never attackers); `build` makes the per-process object that
(a) gives an attacker its D_mal, already relabelled to the target label, from its own data,
and (b) tells the evaluator which test images measure the backdoor, which are the main task
"without the backdoor's own label", and which measure collateral damage. Modules import
torch only inside `build`: specs are read when a config is validated (torch-free).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Protocol

import numpy as np

from fl_core.plugins import Params, Registry
from fl_core.rng import Stream, numpy_rng

if TYPE_CHECKING:
    from fl_core.training import ClientData
    from fl_core.config import SimulationConfig
    from fl_core.data.population import WriterPopulation


@dataclass(frozen=True)
class EvalSets:
    """What the evaluator measures the backdoor on, for the main-task test rows it was given.

    Attributes:
        backdoor: uint8 (n, 28, 28) images whose share predicted as the target label is
            `backdoor_acc`.
        heldout: the same for `backdoor_acc_heldout`, or None when the task has no second set.
        clean: bool per test row: the rows of `main_acc_clean`.
        collateral: bool per test row: the rows whose share predicted as the target label is
            `collateral_rate`.
    """

    backdoor: np.ndarray
    heldout: np.ndarray | None
    clean: np.ndarray
    collateral: np.ndarray


@dataclass(frozen=True)
class BackdoorSets:
    """Row indices into FederatedData's arrays (for a lazy population: into the target
    writers' train/test examples concatenated in `targets` order, `gather`).

    Attributes:
        targets: sorted writer indices of the N target writers.
        reserved: sorted writer indices that are never attackers: the first R of the target
            order (includes `targets`) and, under `attack.pool_rule: unbiased`, the writers
            without a source-label image that the pool's walk passes over (`unbiased_reserve`).
        train_rows: D_mal, rows of `train_pixels` (label them `target_label`).
        heldout_rows: rows of `test_pixels` of the target writers with the source label.
    """

    targets: tuple[int, ...]
    reserved: tuple[int, ...]
    train_rows: np.ndarray
    heldout_rows: np.ndarray


def num_attackers(config: "SimulationConfig", num_writers: int) -> int:
    """m = round(ε·K), the attacker pool's size (0 without an attack)."""
    a = config.attack
    return 0 if a.kind == "none" else int(round(a.fraction * num_writers))


def reserved_count(config: "SimulationConfig", num_writers: int, eligible: int) -> int:
    """R = min(attack.max_tasks, eligible writers, K − m): never more than leaves room for m
    attackers, so small populations still work; R depends on ε, K and max_tasks, never on N."""
    return max(0, min(config.attack.max_tasks, eligible, num_writers - num_attackers(config, num_writers)))


# POPULATION stream keys of the pool's order: an eager population's permutation (the key the
# legacy pool always drew from) and a lazy one's `seeded_writers` order.
POOL_KEY, LAZY_POOL_KEY = 1, 4


def pool_order(seed: int, num_writers: int, lazy: bool) -> Iterator[int]:
    """The attacker pool's seeded order over ALL K writers (`fl_core.sampling`: the pool is its
    first round(ε·K) unreserved writers): a permutation of K for an eager population, the
    O(prefix) `seeded_writers` order for a lazy one."""
    if lazy:
        from fl_core.data.population import seeded_writers

        yield from seeded_writers(seed, LAZY_POOL_KEY, num_writers)
    else:
        yield from numpy_rng(seed, Stream.POPULATION, POOL_KEY).permutation(num_writers).tolist()


def unbiased_reserve(order: Iterable[int], head: set[int], m: int, eligible: Callable[[int], bool]) -> list[int]:
    """The writers besides the reserved `head` that `attack.pool_rule: unbiased` keeps out of
    the pool, so that the pool, the first m writers of `order` not reserved, is:

        the first m writers of `order`, where each head writer among them is replaced by the
        next writer of `order` that is eligible (owns a source-label image) and not in `head`.

    The ineligible writers that replacement walks past are returned: reserving them makes
    the plain walk (`fl_core.sampling.attacker_pool`) land on exactly that pool.

    Why this is unbiased: the head is R writers drawn uniformly among the eligible ones
    (the target order), independent of `order`. The first m writers of a uniform order are a
    uniform m-subset of the population; replacing an eligible writer by the next eligible one
    keeps the number of eligible members (hypergeometric, as in a uniform draw) and makes the
    eligible members the first ones of `order` outside the head: a uniform draw among the
    eligible writers once the head is averaged over. So each writer is in the pool with
    probability m/K, whatever its size; the legacy rule, which skips head writers for the
    next writer of ANY kind, over-draws writers without a source-label image (mostly tiny
    ones), and the more so the smaller K (issue 25).

    If fewer than the needed eligible writers are left outside the head (a population where
    nearly every eligible writer is reserved), the replacements are the next unreserved
    writers of any kind, as in the legacy rule, and nothing more is reserved.
    """
    need, passed = 0, []
    for i, k in enumerate(order):
        if i < m:
            need += k in head
            continue
        if need == 0:
            break
        if k in head:
            continue
        if eligible(k):
            need -= 1
            if need == 0:
                return passed
        else:
            passed.append(k)
    return passed if need == 0 else []


class BackdoorTask(Protocol):
    def malicious(self, own: "ClientData") -> "ClientData":
        """D_mal of an attacker whose own train data is `own`, labelled with the target label."""
        ...

    def eval_sets(self, pixels: np.ndarray, labels: np.ndarray, writer: np.ndarray) -> EvalSets:
        """The backdoor's evaluation sets given the main-task test rows (pixels, labels, writer)."""
        ...


@dataclass(frozen=True)
class BackdoorSpec:
    """A registered backdoor task.

    Attributes:
        name: the `attack.backdoor` value.
        label: the words the report prints for it.
        select: (config, population) → BackdoorSets (targets, reserved writers, D_mal rows).
        build: (params, config, population, sets) → BackdoorTask; imports torch lazily.
        params: its parameter model (`attack.backdoor_params`).
    """

    name: str
    label: str
    select: Callable[["SimulationConfig", "WriterPopulation"], "BackdoorSets"]
    build: Callable[[Any, "SimulationConfig", "WriterPopulation", "BackdoorSets"], BackdoorTask]
    params: type[Params] = Params


BACKDOORS: Registry[BackdoorSpec] = Registry("backdoor task", "attack.backdoor")
register = BACKDOORS.register
DEFAULT_BACKDOOR = "semantic"
