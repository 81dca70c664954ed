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
from fl_core.registry import make_defenses


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
    assert set(DEFENSES) == {"norm-clipping", "weak-dp"}


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
