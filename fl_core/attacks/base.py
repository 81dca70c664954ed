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
from typing import TYPE_CHECKING, Any, Callable, Literal, Protocol

from pydantic import Field, field_validator

from fl_core.plugins import Params, Registry

if TYPE_CHECKING:
    import torch

    from fl_core.attacks.recipes import Recipe

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


# -- the round hook: attackers of one round that collude and craft together ---------------


Knowledge = Literal["omniscient", "own-data"]


@dataclass(frozen=True)
class ForgeContext:
    """Read-only facts of the round a forging attack crafts in.

    Attributes:
        seed: the config seed; `generator` is already drawn from Stream.FORGE for the round.
        round_idx: 0-based round.
        cohort_size: n, every update of the round (benign and attackers).
        num_attackers: the attackers' rows to forge.
        knowledge: what `known` holds (see `KnowledgeParams`).
        config: the whole config (an attack that knows the aggregation rule, Fang's, reads it).
    """

    seed: int
    round_idx: int
    cohort_size: int
    num_attackers: int
    knowledge: Knowledge
    config: "SimulationConfig"


class Forger(Protocol):
    """An attack whose attackers of a round craft their updates together on the server side
    of the simulation, after benign training and before any defense (the Byzantine model:
    ALIE, IPM, Min-Max, Fang, ...). Its `craft` runs on the client as usual and returns the
    attacker's own honest (or backdoor-trained) update; the round then holds the round's
    updates until all are in and calls `forge` once (`fl_core.round.RoundFold`). Same
    rounds, same bits on every backend and on the Ray pool, since only the server forges."""

    knowledge: Knowledge

    def forge(self, known: "torch.Tensor", own: "torch.Tensor", ctx: ForgeContext,
              gen: "torch.Generator") -> tuple["torch.Tensor", dict]:
        """Return the attackers' updates [a, d] (float32, rows in (client_index, slot) order)
        and round metrics. `known` [k, d] float32: the round's benign updates (omniscient) or
        the attackers' own (own-data; then `known` is `own`). `own` [a, d]: what each
        attacker's `craft` returned. Never modify the inputs."""
        ...


def forger(attack: object) -> "Forger | None":
    """The attack as a Forger if it forges (has `forge`), else None."""
    return attack if attack is not None and callable(getattr(attack, "forge", None)) else None


class KnowledgeParams(Params):
    knowledge: Knowledge = Field(
        "omniscient",
        description="what the colluding attackers of a round know when they craft: omniscient (the "
        "round's benign updates, as most Byzantine-attack papers assume) or own-data (only the honest "
        "updates they computed on their own data, as an estimate of the benign ones)",
    )


class HonestCraft:
    """`craft` of a forging attack whose attackers first train honestly on their own data
    (`fl_core.training.local_train`, the benign client's loop), unboosted: the update the
    round hook starts from and, under own-data knowledge, its estimate of the benign ones."""

    def craft(self, task, model, global_params, benign, malicious, hp, gen):
        from fl_core.training import local_train

        return local_train(model, global_params, benign, hp, gen)


# -- learned triggers: an attack that optimises its own trigger between rounds -------------


@dataclass(frozen=True)
class TriggerContext:
    """Read-only facts of the round a learned-trigger attack optimises its trigger in.

    Attributes:
        seed: the config seed; `learn`'s generator is already drawn from Stream.TRIGGER.
        round_idx: 0-based round (one with attackers).
        attackers: the round's attackers' writer indices, sorted.
        data: their train examples concatenated in that order, on `device` (the data the
            colluding attackers pool to optimise one shared trigger).
        global_params: w_t, flat float32 on `device`.
        device: where the optimisation runs (the trial's device).
        config: the whole config.
    """

    seed: int
    round_idx: int
    attackers: tuple[int, ...]
    data: "ClientData"
    global_params: "torch.Tensor"
    device: "torch.device"
    config: "SimulationConfig"


class LearnedTrigger(Protocol):
    """An attack whose trigger is not a fixed pattern but optimised by the attackers
    (A3FL's patch, IBA's generator). Before the clients of a round with attackers train,
    the simulation calls `learn` once, on the server side of the simulation, with the
    trigger state it kept (`SimulationState.attack_state`, checkpointed; {} before the
    first attacked round); the new state rides to every attacker of the round in
    `ClientTask.attack_state`, so `craft` stamps its D_mal with the round's trigger on any
    backend or Ray actor. The evaluator measures `backdoor_acc` with `stamp` and the state
    in force (so after `attack.stop_round` with the last trigger learnt: lifespan)."""

    def learn(self, ctx: TriggerContext, state: dict, gen: "torch.Generator") -> tuple[dict, dict]:
        """(the new state: CPU tensors by name, round metrics). Never modify `state`."""
        ...

    def stamp(self, pixels: "torch.Tensor", state: dict) -> "torch.Tensor":
        """uint8 images (n, 28, 28) with the trigger of `state` applied (a new tensor, same
        device); `state` {} means the attack's initial trigger."""
        ...


def learned_trigger(attack: object) -> "LearnedTrigger | None":
    """The attack as a LearnedTrigger if it learns one (has `learn` and `stamp`), else None."""
    ok = attack is not None and callable(getattr(attack, "learn", None)) and callable(getattr(attack, "stamp", None))
    return attack if ok else None


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
        build: (params, config) → Attack; imports torch lazily. None for `none`.
        params: its parameter model (`attack.params`; defaults filled in when validated).
        radius: (config, β) → the projection radius the planner puts on the task (M/β for
            norm-bounded attacks), or None.
        needs_bound: the attack is defined only under clipping (`defense.norm_bound`).
        rank: its position in the report's ordering of cells.
        backdoor: the backdoor task it needs (`attack.backdoor`; e.g. dba: trigger), or None
            for any task (semantic unless the config says otherwise).
        check: (params, config) → None, raising ConfigError for params that do not fit the
            rest of the config (ALIE's derived z under a schedule that leaves it undefined); run
            when the config is validated, so a grid fails before anything runs.
        goal: `backdoor` (targeted: its measure is backdoor accuracy) or `untargeted` (it
            degrades the main task: its measure is the main-accuracy drop against the
            unattacked cell; the report's heatmap shows that for it).
    """

    name: str
    label: str
    build: Callable[[Any, "SimulationConfig"], Attack | None]
    params: type[Params] = Params
    radius: Callable[["SimulationConfig", float], float | None] = no_radius
    needs_bound: bool = False
    rank: int = 99
    backdoor: str | None = None
    goal: Literal["backdoor", "untargeted"] = "backdoor"
    check: Callable[[Any, "SimulationConfig"], None] | None = None


ATTACKS: Registry[AttackSpec] = Registry("attack", "attack.kind")
register = ATTACKS.register


# -- recipes: how an attacker trains its malicious model (fl_core/attacks/recipes.py) -------


@dataclass(frozen=True)
class RecipeSpec:
    """A registered recipe (`attack.params.recipe` of the attacks that take one).

    Attributes:
        name: its value.
        build: (params, config) → Recipe, `params` being the attack's (`poison_fraction`);
            imports torch lazily.
    """

    name: str
    build: Callable[[Any, "SimulationConfig"], "Recipe"]


RECIPES: Registry[RecipeSpec] = Registry("recipe", "attack.params.recipe")


def _recipes():
    from fl_core.attacks import recipes  # torch: only when an attack is built

    return recipes


RECIPES.register(RecipeSpec("reference", lambda params, config: _recipes().Reference()))
RECIPES.register(RecipeSpec("union", lambda params, config: _recipes().Union()))
RECIPES.register(RecipeSpec("mixed", lambda params, config: _recipes().Mixed(params.poison_fraction)))
# P = the attack's pgd_iterations; model-replacement's RecipeParams have none: the driver's 5
RECIPES.register(RecipeSpec("project-boost", lambda params, config: _recipes().ProjectBoost(
    getattr(params, "pgd_iterations", PGDParams.model_fields["pgd_iterations"].default))))


def make_recipe(params: "RecipeParams", config: "SimulationConfig") -> "Recipe":
    """The recipe an attack's params name, built with them."""
    return RECIPES[params.recipe].build(params, config)


# -- parameters several attacks share (each attack's model lists the ones it takes) --------


class PoisonParams(Params):
    poison_fraction: float = Field(
        0.3125, gt=0, lt=1,
        description="share of each minibatch drawn from D_mal (the mixed recipe, constrain-and-scale; "
        "Bagdasaryan et al.: 20 of 64)",
    )


class RecipeParams(PoisonParams):
    recipe: str = Field(
        "reference",
        description="how the attacker trains its malicious model: reference (the paper's code: "
        "Δ_benign + β·one full-batch step on D_mal), union (train on own ∪ D_mal, boost all), mixed "
        "(every minibatch carries poison_fraction of D_mal), project-boost (the paper driver's "
        "ClientProjectBoost: pgd_iterations chained passes of {own epochs, one full-batch D_mal step}, "
        "all boosted); see fl_core/attacks/recipes.py",
    )

    @field_validator("recipe")
    @classmethod
    def _known_recipe(cls, v: str) -> str:
        RECIPES.spec_for(v)  # a ConfigError with a did-you-mean
        return v


class PGDParams(RecipeParams):
    pgd_iterations: int = Field(5, ge=1, description="P: PGD passes, projecting after each")
