"""The one plug-in registry shape (`fl_core/plugins.py`) and the families built on it."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from fl_core.aggregators import AGGREGATORS
from fl_core.attacks import ATTACKS
from fl_core.backdoors import BACKDOORS
from fl_core.config import parse_config
from fl_core.defenses import DEFENSES
from fl_core.defenses.norm_clipping import NormClipping
from fl_core.defenses.weak_dp import GaussianNoise
from fl_core.errors import ConfigError
from fl_core.plugins import Registry
from fl_core.build import make_defenses


@dataclass(frozen=True)
class Spec:
    name: str


def test_a_registry_refuses_a_second_registration_and_suggests_the_closest_name():
    reg: Registry[Spec] = Registry("widget", "x.widget")
    reg.register(Spec("alpha"))
    reg.register(Spec("beta"))
    with pytest.raises(ValueError, match="widget 'alpha' registered twice"):
        reg.register(Spec("alpha"))
    assert reg.spec_for("beta") == Spec("beta") and list(reg) == ["alpha", "beta"] and len(reg) == 2
    with pytest.raises(ConfigError, match=r"`x\.widget`: 'alpah'.*did you mean `alpha`\? one of: alpha, beta"):
        reg.spec_for("alpah")
    with pytest.raises(ConfigError, match=r"one of: alpha, beta"):
        reg.spec_for(3)


def test_every_family_is_a_registry_keyed_by_its_config_key():
    assert (ATTACKS.key, AGGREGATORS.key, BACKDOORS.key) == ("attack.kind", "defense.aggregator", "attack.backdoor")
    assert set(DEFENSES) == {"norm-clipping", "weak-dp", "adaptive-clipping", "crfl"}


def test_defenses_switch_on_by_their_keys_and_chain_clipping_before_noise():
    assert make_defenses(parse_config({})) == []
    clip = make_defenses(parse_config({"defense": {"norm_bound": 2.0}}))
    assert [type(d) for d in clip] == [NormClipping] and clip[0].bound == 2.0
    both = make_defenses(parse_config({"defense": {"norm_bound": 2.0, "noise_sigma": 0.1}}))
    assert [type(d) for d in both] == [NormClipping, GaussianNoise]


def test_one_list_of_execution_only_keys_drives_every_hash_and_the_report():
    """A change of an execution-only key keeps the checkpoint guard, the warm-up key and the
    report cell; backend and threads change float bits, so the checkpoint guard sees them."""
    from fl_core.config import EXECUTION_ONLY_KEYS, result_hash, set_dotted
    from sweeper.report.load import NON_CELL_KEYS
    from sweeper.warmup import _NOT_IN_KEY

    changed = {"fl.workers": 3, "fl.checkpoint_every": 7, "fl.eval_every": 5, "fl.vectorized_chunk": 4}
    assert set(changed) == set(EXECUTION_ONLY_KEYS) == set(_NOT_IN_KEY)
    assert set(EXECUTION_ONLY_KEYS) < NON_CELL_KEYS
    base = parse_config({})
    for key, value in changed.items():
        assert result_hash(parse_config(set_dotted({}, key, value))) == result_hash(base), key
    assert result_hash(parse_config({"fl": {"rounds": 7}})) == result_hash(base)  # a resume may extend
    for key, value in {"fl.backend": "vectorized", "fl.threads": 2}.items():
        assert result_hash(parse_config(set_dotted({}, key, value))) != result_hash(base), key


# -- strict types ------------------------------------------------------------------------


def _number_fields(model):
    """(name, python type) of every int or float field of a pydantic model."""
    import typing

    for name, f in model.model_fields.items():
        kinds = {a for a in (typing.get_args(f.annotation) or (f.annotation,)) if a in (int, float)}
        if kinds:
            yield name, (float if float in kinds else int)


def _config_sections():
    from fl_core.config import SimulationConfig

    for section, f in SimulationConfig.model_fields.items():
        if isinstance(f.annotation, type) and hasattr(f.annotation, "model_fields"):
            yield section, f.annotation


@pytest.mark.parametrize("bad", [True, False, "1", "0.2"], ids=["true", "false", "str-int", "str-float"])
def test_every_number_of_the_config_refuses_booleans_and_strings(bad):
    """YAML `true` is not 1, nor "1" a number: every int/float key of every section (and
    the seed) is checked, so a key added later is too."""
    keys = [("seed", None)] + [(f"{s}.{n}", None) for s, m in _config_sections() for n, _ in _number_fields(m)]
    assert len(keys) > 20
    from fl_core.config import set_dotted

    for key, _ in keys:
        with pytest.raises(ConfigError) as e:
            parse_config(set_dotted({}, key, bad))
        assert e.value.path == key and e.value.value == bad, (key, str(e.value))


@pytest.mark.parametrize("bad", [True, "1", "0.2"], ids=["true", "str-int", "str-float"])
def test_every_plugin_parameter_refuses_booleans_and_strings(bad):
    """Krum's `f: true` or `"1"`, trimmed mean's β `"0.2"`: refused for every number
    parameter of every registered attack, aggregator and backdoor task."""
    from fl_core.plugins import validate_params

    checked = 0
    for family in (ATTACKS, AGGREGATORS, BACKDOORS):
        for name, spec in family.items():
            for param, _ in _number_fields(spec.params):
                with pytest.raises(ConfigError) as e:
                    validate_params("x.params", name, spec.params, {param: bad})
                assert e.value.path == f"x.params.{param}", str(e.value)
                checked += 1
    assert checked >= 8


def test_an_integer_is_taken_where_a_float_is_expected():
    cfg = parse_config({"fl": {"client_lr": 1}, "defense": {"norm_bound": 3, "aggregator": "trimmed-mean",
                                                             "aggregator_params": {"beta": 0}}})
    assert cfg.fl.client_lr == 1.0 and isinstance(cfg.fl.client_lr, float)
    assert cfg.defense.norm_bound == 3.0 and cfg.defense.aggregator_params == {"beta": 0.0}


def test_inf_in_plugin_params_is_an_invalid_value_not_an_unknown_key():
    """`attack.params.top_k: .inf` used to be reported as an unknown key (the grid took any
    ConfigError whose key is not a core key for a misspelling); now only a key that does not
    exist raises UnknownKeyError."""
    from fl_core.errors import UnknownKeyError

    with pytest.raises(ConfigError) as e:
        parse_config({"attack": {"kind": "neurotoxin", "fraction": 0.1, "params": {"top_k": float("inf")}}})
    assert not isinstance(e.value, UnknownKeyError) and "finite number" in e.value.allowed
    with pytest.raises(UnknownKeyError) as e:
        parse_config({"attack": {"kind": "neurotoxin", "fraction": 0.1, "params": {"top_kk": 0.1}}})
    assert "did you mean `top_k`" in e.value.allowed
    with pytest.raises(UnknownKeyError):
        parse_config({"fl": {"roundz": 3}}, source="x.yaml")
