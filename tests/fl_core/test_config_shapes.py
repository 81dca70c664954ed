"""The old flat attack shape and the new one (issue 20): `attack.pgd_iterations`,
`attack.recipe` and `attack.poison_fraction` moved into `attack.params` of the attacks that
take them. A config in the old shape loads, with one DeprecatedConfigWarning line, into the
same config as the new shape, with the same trial key (tests/sweeper/test_frozen_keys.py
pins the keys themselves); and a new attack with its own params is one file and its tests
(here a test-only plug-in, registered for the test)."""

from __future__ import annotations

import warnings

import pytest
import torch
from pydantic import Field

from fl_core.attacks import ATTACKS
from fl_core.attacks.base import AttackSpec, Params, pgd_radius
from fl_core.config import DeprecatedConfigWarning, config_hash, flatten, parse_config, result_hash
from fl_core.errors import ConfigError, UnknownKeyError

TAKES = {  # the legacy keys each attack takes (its params model's fields)
    "none": set(),
    "model-replacement": {"recipe", "poison_fraction"},
    "pgd": {"pgd_iterations", "recipe", "poison_fraction"},
    "neurotoxin": {"pgd_iterations", "recipe", "poison_fraction"},
    "dba": {"pgd_iterations", "recipe", "poison_fraction"},
    "constrain-and-scale": {"poison_fraction"},
    "chameleon": {"poison_fraction"},
    "a3fl": {"pgd_iterations"},
}
LEGACY = {"pgd_iterations": 3, "recipe": "union", "poison_fraction": 0.25}


def base(kind: str) -> dict:
    attack = {"kind": kind} if kind == "none" else {"kind": kind, "fraction": 0.1}
    return {"attack": attack, "defense": {"norm_bound": 3.0}}


def parse_old(raw: dict):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = parse_config(raw)
    return cfg, [w for w in caught if issubclass(w.category, DeprecatedConfigWarning)]


def test_registered_params_take_the_legacy_keys_listed_here():
    for kind, keys in TAKES.items():
        assert set(ATTACKS[kind].params.model_fields) & set(LEGACY) == keys, kind


@pytest.mark.parametrize("kind", sorted(TAKES))
def test_old_and_new_shape_are_the_same_config_with_the_same_keys(kind):
    taken = {k: v for k, v in LEGACY.items() if k in TAKES[kind]}
    old_raw = base(kind)
    old_raw["attack"].update(taken)
    new_raw = base(kind)
    new_raw["attack"]["params"] = taken
    old, notes = parse_old(old_raw)
    new = parse_config(new_raw)
    assert old == new  # the same model: the same attack is built, the same run
    assert config_hash(old) == config_hash(new) and result_hash(old) == result_hash(new)
    assert flatten(old) == flatten(new)  # MLflow params and the report's columns
    assert all(flatten(new)[f"attack.{k}"] == v for k, v in taken.items())
    assert len(notes) == (1 if taken else 0)
    assert not set(LEGACY) & set(old.model_dump(mode="json")["attack"])  # it dumps in the new shape
    assert all("\n" not in str(w.message) and "attack.params" in str(w.message) for w in notes)


@pytest.mark.parametrize("kind", sorted(TAKES))
def test_a_legacy_value_the_attack_ignores_keeps_its_trial_key_and_round_trips(kind):
    """`attack.pgd_iterations: 3` under model-replacement changed nothing but the trial key:
    it stays (hash only) so that the old trial is still found; a dump re-parses to the same."""
    raw = base(kind)
    raw["attack"].update(LEGACY)
    cfg, notes = parse_old(raw)
    assert len(notes) == 1 and "\n" not in str(notes[0].message)
    for key, value in LEGACY.items():
        assert flatten(cfg)[f"attack.{key}"] == value
        assert (key in cfg.attack.params) == (key in TAKES[kind])
    again, _ = parse_old(cfg.model_dump(mode="json"))
    assert again == cfg and config_hash(again) == config_hash(cfg)


def test_old_default_values_hash_as_if_absent():
    explicit = base("model-replacement")
    explicit["attack"].update(pgd_iterations=5, recipe=None, poison_fraction=0.3125)
    cfg, _ = parse_old(explicit)
    assert config_hash(cfg) == config_hash(parse_config(base("model-replacement")))
    assert cfg == parse_config(base("model-replacement"))


def test_bad_legacy_values_name_the_key_as_written():
    with pytest.raises(ConfigError) as e:
        parse_old({"attack": {"kind": "pgd", "fraction": 0.1, "recipe": "bagdasaryan"}, "defense": {"norm_bound": 1.0}})
    assert e.value.path == "attack.recipe" and "mixed" in e.value.allowed
    with pytest.raises(ConfigError) as e:
        parse_old({"attack": {"kind": "model-replacement", "fraction": 0.1, "pgd_iterations": 0}})
    assert e.value.path == "attack.pgd_iterations"
    with pytest.raises(ConfigError) as e:
        parse_old({"attack": {"kind": "pgd", "fraction": 0.1, "pgd_iterations": 2, "params": {"pgd_iterations": 3}},
                   "defense": {"norm_bound": 1.0}})
    assert e.value.path == "attack.pgd_iterations" and "attack.params.pgd_iterations" in e.value.allowed
    with pytest.raises(UnknownKeyError) as e:
        parse_config({"attack": {"kind": "constrain-and-scale", "fraction": 0.1, "params": {"recipe": "mixed"}}})
    assert e.value.path == "attack.params.recipe"


# -- a new attack: its file and its tests only ----------------------------------------------


class DoubledParams(Params):
    factor: float = Field(2.0, gt=0, description="what the benign update is multiplied by")


class Doubled:
    """Sends factor × its benign update (a test plug-in: composes the one training loop)."""

    def __init__(self, factor: float):
        self.factor = factor

    def craft(self, task, model, global_params, benign, malicious, hp, gen):
        from fl_core.attacks.recipes import Reference

        delta, metrics = Reference().replacement(model, global_params, benign, malicious, hp, gen, 0.0)
        return self.factor * delta, metrics


@pytest.fixture
def doubled():
    ATTACKS.register(AttackSpec("doubled", "doubled (test)", lambda params, config: Doubled(params.factor),
                                DoubledParams, radius=pgd_radius, rank=90))
    yield
    ATTACKS.unregister("doubled")


def test_a_new_attack_validates_hashes_and_runs_a_round(doubled, tiny_data):
    from fl_core.simulate import Simulation

    raw = {"seed": 1, "fl": {"rounds": 2, "clients_per_round": 4, "local_epochs": 1, "batch_size": 5, "device": "cpu"},
           "attack": {"kind": "doubled", "fraction": 0.2, "frequency": 1, "num_tasks": 3, "params": {"factor": 3.0}}}
    cfg = parse_config(raw)
    assert cfg.attack.params == {"factor": 3.0} and flatten(cfg)["attack.params.factor"] == 3.0
    assert config_hash(cfg) != config_hash(parse_config({**raw, "attack": {**raw["attack"], "params": {}}}))
    assert config_hash(parse_config({**raw, "attack": {**raw["attack"], "params": {}}})) == \
        config_hash(parse_config({**raw, "attack": {**raw["attack"], "params": {"factor": 2.0}}}))
    with pytest.raises(UnknownKeyError, match="did you mean `factor`"):
        parse_config({**raw, "attack": {**raw["attack"], "params": {"facter": 3.0}}})
    with pytest.raises(ConfigError, match="attack.params.factor"):
        parse_config({**raw, "attack": {**raw["attack"], "params": {"factor": -1.0}}})
    metrics = Simulation(cfg, data=tiny_data).run()
    assert len(metrics) == 2 and sum(m["num_attackers"] for m in metrics) >= 1
    assert all(torch.isfinite(torch.tensor(m["main_loss"])) for m in metrics)
