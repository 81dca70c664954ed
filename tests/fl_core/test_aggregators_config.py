"""`defense.aggregator` and `defense.aggregator_params`: validation with did-you-mean, the
config hash of existing configs unchanged at the defaults, and dotted keys for grids."""

from __future__ import annotations

import pytest

from fl_core.aggregators import AGGREGATORS
from fl_core.config import all_keys, config_hash, flatten, parse_config, result_hash, set_dotted
from fl_core.errors import ConfigError

# Hashes of three configs computed with the code before aggregators existed (commit
# cc5fe87, `fl_core.config.config_hash` / `result_hash`): the defaults must not move them,
# or every existing trial key, MLflow tag and checkpoint guard would change.
OLD = [
    ({}, "afad744cbbd6d3e1e54174811b9876a6f486f37b0403144c56654f0cb389af29",
     "cee929af3c6f589583f6b7ab1bca5f7045742f22cbf95e221c0c5a3d525dddc2"),
    ({"attack": {"kind": "pgd", "fraction": 0.033, "pool_rule": "legacy-eligible"},  # the pool before issue 25
      "defense": {"norm_bound": 3.0, "weighting": "uniform"}},
     "2a9b44eb4f4772420495546a9aa5adafc2cb0d1d2157eb2cfe5d4320fe85e8bb",
     "0611ed2d3ae62ee1b47c1cbad2c5bba6c7504ced51fda8e22748f1ff855bcb11"),
    ({"defense": {"noise_sigma": 0.025, "norm_bound": 5.0}, "seed": 2},
     "e69bacce64e036e8093f0d372b6551dd7ef70a6469e6b98528ada33af62a9527",
     "e7a8a4b88a4451a857e82ef8bd9bbe25e84c847118c264ff5595f15881421965"),
]


@pytest.mark.parametrize("raw,trial_key,checkpoint_key", OLD)
def test_defaults_leave_existing_hashes_unchanged(raw, trial_key, checkpoint_key):
    cfg = parse_config(raw)
    assert config_hash(cfg) == trial_key and result_hash(cfg) == checkpoint_key
    explicit = parse_config({**raw, "defense": {**raw.get("defense", {}), "aggregator": "fedavg",
                                                "aggregator_params": {}}})
    assert config_hash(explicit) == trial_key


def test_a_robust_aggregator_changes_the_hash_and_defaults_are_filled_in():
    base = parse_config({})
    krum = parse_config({"defense": {"aggregator": "krum"}})
    assert config_hash(krum) != config_hash(base)
    # {} and the spelled-out defaults are the same trial
    assert krum.defense.aggregator_params == {"f": None}
    assert config_hash(krum) == config_hash(parse_config({"defense": {"aggregator": "krum", "aggregator_params": {"f": None}}}))
    assert config_hash(parse_config({"defense": {"aggregator": "krum", "aggregator_params": {"f": 3}}})) != config_hash(krum)


@pytest.mark.parametrize("defense,key,fragment", [
    ({"aggregator": "krun"}, "defense.aggregator", "did you mean `krum`?"),
    ({"aggregator": "trimmed-mean", "aggregator_params": {"betta": 0.1}}, "defense.aggregator_params.betta",
     "did you mean `beta`?"),
    ({"aggregator": "trimmed-mean", "aggregator_params": {"beta": 0.5}}, "defense.aggregator_params.beta", "less than 0.5"),
    ({"aggregator": "rfa", "aggregator_params": {"nu": 0}}, "defense.aggregator_params.nu", "greater than 0"),
    ({"aggregator": "krum", "aggregator_params": {"f": 28}}, "defense.aggregator_params.f", "at most fl.clients_per_round − 3 = 27"),
    ({"aggregator": "multi-krum", "aggregator_params": {"m": 31}}, "defense.aggregator_params.m", "at most fl.clients_per_round = 30"),
    ({"aggregator": "foolsgold", "aggregator_params": {"features": "last"}}, "defense.aggregator_params.features", "output-layer"),
    ({"aggregator_params": {"f": 1}}, "defense.aggregator_params.f", "fedavg takes no parameters"),
])
def test_bad_aggregator_settings_name_the_key_and_what_is_allowed(defense, key, fragment):
    with pytest.raises(ConfigError) as e:
        parse_config({"defense": defense}, source="grid.yaml")
    assert e.value.path == key and fragment in e.value.allowed and "grid.yaml" in str(e.value)


def test_unknown_aggregator_lists_the_registered_ones():
    with pytest.raises(ConfigError) as e:
        parse_config({"defense": {"aggregator": "no-such-rule"}})
    assert "one of: " + ", ".join(sorted(AGGREGATORS)) in e.value.allowed


def test_dotted_keys_reach_the_params():
    raw = set_dotted({"defense": {"aggregator": "multi-krum"}}, "defense.aggregator_params.m", 4)
    cfg = parse_config(raw)
    assert cfg.defense.aggregator_params == {"f": None, "m": 4}
    flat = flatten(cfg)
    assert flat["defense.aggregator"] == "multi-krum" and flat["defense.aggregator_params.m"] == 4
    keys = all_keys(plugins=True)
    assert "attack.params.top_k" in keys and "defense.aggregator_params.f" not in all_keys()
    assert {"defense.aggregator", "defense.aggregator_params.f", "defense.aggregator_params.beta",
            "defense.aggregator_params.noise_lambda"} <= set(keys)
    # a flat (MLflow-style) config goes back to the same config
    nested: dict = {}
    for k, v in flat.items():
        set_dotted(nested, k, v)
    assert parse_config(nested) == cfg
