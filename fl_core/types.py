"""Plain frozen records that travel between the planner, the clients and the server.

Sign convention: an update (Delta) is `local − global`, a flat float32 vector; the server
applies `global + η · aggregate(updates)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # annotations only: planning (fl_core.sampling) and grid validation run without torch
    import torch

Delta = "torch.Tensor"  # flat float32, local − global (a forward reference: annotations only)

Role = Literal["benign", "attacker"]


@dataclass(frozen=True)
class ClientTask:
    """One client's job in one round; everything an actor needs besides data and weights.

    Attributes:
        round_idx: 0-based round.
        client_index: the writer's index in the sorted population (stable key of its RNG).
        slot: 0 for the first time the writer is in this round's cohort; 1, 2, … for
            duplicates under with-replacement sampling (each gets its own stream).
        role: benign trains honestly; attacker runs the configured attack.
        seed: the derived seed of this task's shuffling and dropout.
        boost: β for attackers (1 for benign clients).
        radius: PGD projection radius M/β around the global weights (attackers, pgd).
        rank: attackers: the writer's position in the sorted attacker pool (a stable
            identity among the attackers, e.g. DBA's local trigger); None for benign tasks.
        attack_state: attackers of an attack that learns its trigger
            (`fl_core.attacks.base.LearnedTrigger`): the round's trigger state (CPU tensors by
            name), set by the simulation after planning; None otherwise. Not part of the
            task's identity (equality, repr).
    """

    round_idx: int
    client_index: int
    slot: int
    role: Role
    seed: int
    boost: float = 1.0
    radius: float | None = None
    rank: int | None = None
    attack_state: "dict | None" = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class ClientResult:
    """What a client sends back.

    Attributes:
        num_examples: n_k, the FedAvg weight (the writer's own train examples).
        delta: flat float32 CPU update (boosted for attackers), before any defense.
        metrics: client-side diagnostics (e.g. `train_loss`).
    """

    client_index: int
    slot: int
    role: Role
    num_examples: int
    delta: Delta
    metrics: dict = field(default_factory=dict)


@dataclass(frozen=True)
class RoundPlan:
    """A pure function of (config, round_idx): who trains and who attacks."""

    round_idx: int
    tasks: tuple[ClientTask, ...]

    @property
    def num_attackers(self) -> int:
        return sum(t.role == "attacker" for t in self.tasks)
