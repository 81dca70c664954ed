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
from typing import TYPE_CHECKING, Any, Callable, Protocol

import numpy as np

from fl_core.plugins import Params, Registry

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
        reserved: sorted writer indices that are never attackers (the first R of the target
            order; includes `targets`).
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
