"""DBA, the distributed backdoor attack (Xie et al., ICLR 2020, "DBA: Distributed Backdoor
Attacks against Federated Learning"): the trigger is split into local parts and each
attacker poisons its data with its own part only, while the model is tested with the whole
trigger. No single update carries the full pattern, which is what makes it harder to spot.

Here the global trigger is the `trigger` backdoor task's four bars (DBA's MNIST layout,
`fl_core/backdoors/trigger.py`) and the attacker at position r of the sorted attacker pool
stamps bar r mod 4 (DBA assigns local trigger i to adversary i, for the whole run). Its D_mal
is its own non-target-label images with that bar, relabelled to the target label; the
update is then the configured recipe's, as PGD under clipping (projection onto M/β) and as
boosted model replacement without (the same rule as Neurotoxin, `pgd.recipe_update`).

Its recipe is `mixed` unless the config names one (`attack.params.recipe`): DBA's attackers
train on poisoned minibatches (20 of 64 images stamped on MNIST, our poison_fraction default).
The paper's `reference` recipe (one full-batch step on D_mal alone) is wrong for a trigger:
measured on the embedded writers from the 30-round warm-up, unclipped, one attacker per round,
it taught "everything is a 1" (rounds 32-34: main accuracy 0.15, 96% of clean images read as
1s), where `mixed` taught the trigger (round 36: 56% of stamped images read as 1s, 1.8% of
clean ones). docs/ROBUSTNESS.md has the numbers.
"""

from __future__ import annotations

from pydantic import Field

from fl_core.attacks.base import AttackSpec, PGDParams, make_recipe, pgd_radius, register


class DBAParams(PGDParams):
    recipe: str = Field("mixed", description=PGDParams.model_fields["recipe"].description)


class DBA:
    def __init__(self, iterations: int, recipe, trigger, target: int):
        self.iterations = iterations
        self.recipe = recipe
        self.trigger = trigger  # TriggerParams
        self.target = target

    def part(self, task) -> int:
        """The bar this attacker stamps: its pool position mod the number of bars."""
        from fl_core.backdoors.trigger import BARS

        assert task.rank is not None, "plan_round gives every attacker its pool position"
        return task.rank % len(BARS)

    def craft(self, task, model, global_params, benign, malicious, hp, gen):
        from fl_core.attacks.pgd import recipe_update
        from fl_core.backdoors.trigger import pattern, poisoned

        part = self.part(task)
        mal = poisoned(benign, pattern(self.trigger, part), self.trigger.value, self.target)
        delta, metrics = recipe_update(self.recipe, self.iterations, task, model, global_params,
                                       benign, mal, hp, gen)
        return delta, {**metrics, "dba_part": part}


def _build(params: DBAParams, config) -> DBA:
    from fl_core.backdoors.trigger import TriggerParams

    a = config.attack
    return DBA(params.pgd_iterations, make_recipe(params, config), TriggerParams(**a.backdoor_params), a.target_label)


register(AttackSpec("dba", "DBA (trigger)", _build, DBAParams, radius=pgd_radius, rank=5, backdoor="trigger"))
