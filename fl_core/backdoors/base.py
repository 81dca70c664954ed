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
    from fl_core.data.backdoor import BackdoorSets
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
        build: (config, params, population, sets) → BackdoorTask; imports torch lazily.
        params: its parameter model (`attack.backdoor_params`).
    """

    name: str
    label: str
    select: Callable[["SimulationConfig", "WriterPopulation"], "BackdoorSets"]
    build: Callable[["SimulationConfig", Any, "WriterPopulation", "BackdoorSets"], BackdoorTask]
    params: type[Params] = Params


BACKDOORS: Registry[BackdoorSpec] = Registry("backdoor task", "attack.backdoor")
register = BACKDOORS.register
DEFAULT_BACKDOOR = "semantic"
