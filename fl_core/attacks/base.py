"""The attack plug-in shape: a registered spec (name, parameters, label, how it plans its
round) and the Attack protocol (how a compromised client builds the update it sends).

An attack composes the one client training loop (`fl_core.training`), never copies it, and
returns the update it sends (already boosted by the task's β), before any server defense.
Each attack module registers an `AttackSpec` at import; `fl_core.attacks` imports every
module of the package, so adding an attack takes one file and its tests. Attack modules
import torch only inside `build`/`craft`: the specs are read when a config is validated,
which stays torch-free (`fl-sweep validate`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol

from fl_core.plugins import Params, Registry

if TYPE_CHECKING:
    import torch

    from fl_core.training import ClientData, SGDParams
    from fl_core.config import SimulationConfig
    from fl_core.types import ClientTask, Delta


class Attack(Protocol):
    def craft(
        self,
        task: "ClientTask",
        model: "torch.nn.Module",
        global_params: "torch.Tensor",
        benign: "ClientData",
        malicious: "ClientData",
        hp: "SGDParams",
        gen: "torch.Generator",
    ) -> tuple["Delta", dict]:
        """Return (update to send, metrics). `benign` is D_trn (the attacker's own data),
        `malicious` is D_mal already relabelled to the target label."""
        ...


def no_radius(config: "SimulationConfig", beta: float) -> float | None:
    return None


def pgd_radius(config: "SimulationConfig", beta: float) -> float | None:
    """M/β: the attacker's bound on w − w_t, so that its boosted update has norm ≤ M and
    survives clipping at M intact (Sun et al. 2019 §2); none without clipping."""
    m = config.defense.norm_bound
    return None if m is None else m / beta


@dataclass(frozen=True)
class AttackSpec:
    """A registered attack.

    Attributes:
        name: the `attack.kind` value.
        label: the word the report prints for it (`PGD`, `unconstrained`, …).
        build: (config, params) → Attack; imports torch lazily. None for `none`.
        params: its parameter model (`attack.params`; defaults filled in when validated).
        radius: (config, β) → the projection radius the planner puts on the task (M/β for
            norm-bounded attacks), or None.
        needs_bound: the attack is defined only under clipping (`defense.norm_bound`).
        rank: its position in the report's ordering of cells.
        backdoor: the backdoor task it needs (`attack.backdoor`; e.g. dba: trigger), or None
            for any task (semantic unless the config says otherwise).
        recipe: the `attack.recipe` it uses when the config leaves it null.
    """

    name: str
    label: str
    build: Callable[["SimulationConfig", Any], Attack | None]
    params: type[Params] = Params
    radius: Callable[["SimulationConfig", float], float | None] = no_radius
    needs_bound: bool = False
    rank: int = 99
    backdoor: str | None = None
    recipe: str = "reference"


ATTACKS: Registry[AttackSpec] = Registry("attack", "attack.kind")
register = ATTACKS.register
