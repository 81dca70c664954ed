"""`defense.preaggregation`: Bucketing and NNM before any aggregator.

Golden cases are small integers (or halves), so every float64 sum and float32 mean here is
exact and the asserts use torch.equal; the arithmetic is in the comments. Then: the seeded
shuffle, the order steps run in, weights through buckets, rows vs clients (flag rates), the
config (validation errors, defaults filled in, hashes of configs without the key unchanged,
no torch to parse it) and tiny end-to-end simulations.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fl_core.aggregators.base import AggregatorContext
from fl_core.aggregators.fedavg import FedAvg
from fl_core.aggregators.krum import Krum
from fl_core.aggregators.median import Median
from fl_core.config import (
    all_keys,
    config_hash,
    flatten,
    is_plugin_param,
    parse_config,
    parse_flat,
    result_hash,
)
from fl_core.errors import ConfigError, UnknownKeyError
from fl_core.preaggregators import PREAGGREGATORS
from fl_core.preaggregators.base import PreaggContext
from fl_core.preaggregators.bucketing import Bucketing, bucket_means, buckets, permutation
from fl_core.preaggregators.compose import Preaggregated, build_steps, with_preaggregation
from fl_core.preaggregators.nnm import NNM, neighbours
from fl_core.round import RoundFold, apply_round
from fl_core.simulate import Simulation
from fl_core.state import SimulationState, load_state, save_state
from fl_core.types import ClientResult, ClientTask, RoundPlan

REPO = Path(__file__).resolve().parents[2]


def col(*values: float) -> torch.Tensor:
    """[n, 2] float32 rows (v, 2v): distances scale by √5, so the neighbour sets are those of
    the first column, and the second checks that whole rows are averaged."""
    v = torch.tensor(values, dtype=torch.float32)
    return torch.stack([v, 2 * v], dim=1)


def ones(n: int) -> torch.Tensor:
    return torch.ones(n, dtype=torch.float64)


def ctx(n: int, round_idx: int = 0) -> AggregatorContext:
    return AggregatorContext(0, round_idx, n, tuple(range(n)))


def test_the_registry_holds_both_steps():
    assert set(PREAGGREGATORS) == {"bucketing", "nnm"}
    assert PREAGGREGATORS["bucketing"].params().s == 2  # the authors' code
    assert PREAGGREGATORS["nnm"].params().f is None


# --------------------------------------------------------------------------- Bucketing


def test_bucket_means_and_weights_golden():
    # x = 0, 2, 4, 6, 10 (and doubled), weights 1..5, π = (3, 0, 4, 1, 2), s = 2:
    # buckets {3, 0}, {4, 1}, {2}: means (6+0)/2 = 3, (10+2)/2 = 6, 4;
    # weights 4+1 = 5, 5+2 = 7, 3
    x = col(0, 2, 4, 6, 10)
    groups = buckets(np.array([3, 0, 4, 1, 2]), 2)
    assert groups == [[3, 0], [4, 1], [2]]
    rows, w = bucket_means(x, torch.tensor([1.0, 2, 3, 4, 5], dtype=torch.float64), groups)
    assert torch.equal(rows, col(3, 6, 4))
    assert w.tolist() == [5.0, 7.0, 3.0]
    # s = 3: {3, 0, 4}, {1, 2}: (6+0+10)/3 is not exact; 7 rows, s = 4: ⌈7/4⌉ = 2 rows
    assert buckets(np.arange(7), 4) == [[0, 1, 2, 3], [4, 5, 6]]


def test_bucketing_applies_the_stream_permutation():
    x = col(0, 2, 4, 6, 10, 12, 14)
    w = torch.arange(1, 8, dtype=torch.float64)
    rows, rw, m = Bucketing(2).apply(x, w, PreaggContext(11, 4, 1))
    perm = permutation(11, 4, 1, 7)
    want_rows, want_w = bucket_means(x, w, buckets(perm, 2))
    assert torch.equal(rows, want_rows) and torch.equal(rw, want_w)
    assert rows.shape == (4, 2) and m == {"bucketing_buckets": 4}  # ⌈7/2⌉
    assert rw.sum().item() == w.sum().item()  # every weight lands in one bucket
    assert torch.equal(x, col(0, 2, 4, 6, 10, 12, 14))  # not in place


def test_the_seeded_shuffle_is_deterministic_and_keyed_by_seed_round_and_position():
    p = permutation(0, 0, 0, 6)
    # Stream.PREAGG for (seed 0, round 0, position 0), recorded once: numpy's SeedSequence
    # and PCG64 are specified bit for bit, so this pins the stream on every machine
    assert p.tolist() == [3, 4, 0, 1, 2, 5]
    assert sorted(p.tolist()) == list(range(6))
    assert permutation(0, 0, 0, 6).tolist() == p.tolist()  # same key: same shuffle
    n = 20  # 20! permutations: two keys drawing the same one by chance is negligible
    base = permutation(3, 5, 0, n).tolist()
    assert base == permutation(3, 5, 0, n).tolist()
    for other in (permutation(4, 5, 0, n), permutation(3, 6, 0, n), permutation(3, 5, 1, n)):
        assert other.tolist() != base
    # global RNG state is neither read nor changed
    np.random.seed(1), torch.manual_seed(1)
    before = (np.random.get_state()[1].copy(), torch.get_rng_state().clone())
    assert permutation(3, 5, 0, n).tolist() == base
    assert (np.random.get_state()[1] == before[0]).all() and torch.equal(torch.get_rng_state(), before[1])


# --------------------------------------------------------------------------- NNM


def test_nnm_golden():
    # x = 0, 3, 6, 30; n = 4, f = 1: each row → mean of its 3 nearest (itself included)
    # row 0: d = 0, 3, 6, 30 → {0, 3, 6} → 3;  row 1: d = 3, 0, 3, 27 → {3, 0, 6} → 3
    # row 2: d = 6, 3, 0, 24 → {6, 3, 0} → 3;  row 3: d = 30, 27, 24, 0 → {30, 6, 3} → 13
    x = col(0, 3, 6, 30)
    w = torch.tensor([1.0, 2, 3, 4], dtype=torch.float64)
    rows, rw, m = NNM(1).apply(x, w, PreaggContext(0, 0, 0))
    assert torch.equal(rows, col(3, 3, 3, 13))
    assert torch.equal(rw, w) and m == {"nnm_f": 1}  # each row keeps its weight
    assert torch.equal(x, col(0, 3, 6, 30))  # not in place


def test_nnm_ties_go_to_the_lower_row_and_f_defaults_to_the_most_it_tolerates():
    # x = -1, 0, 1; f = 1, k = 2: row 1 (0) is 1 from both others: the lower row 0 wins
    # → (0 + -1)/2 = -0.5; row 0 → (-1 + 0)/2 = -0.5; row 2 → (1 + 0)/2 = 0.5
    rows, _, _ = NNM(1).apply(col(-1, 0, 1), ones(3), PreaggContext(0, 0, 0))
    assert torch.equal(rows, col(-0.5, -0.5, 0.5))
    assert neighbours(col(-1, 0, 1), 2).tolist() == [[0, 1], [1, 0], [2, 1]]
    # f = null with n = 5: ⌊(5 − 1)/2⌋ = 2, so the 3 nearest: x = 0, 1, 2, 10, 11
    # row 0 → {0,1,2} = 1; row 1 → 1; row 2: d = 2, 1, 0, 8, 9 → {2,1,0} = 1;
    # row 3: d = 10, 9, 8, 0, 1 → {10, 11, 2} = 23/3 (not exact: check the rest)
    rows, _, m = NNM(None).apply(col(0, 1, 2, 10, 11), ones(5), PreaggContext(0, 0, 0))
    assert m == {"nnm_f": 2}
    assert torch.equal(rows[:3], col(1, 1, 1))
    # f = 0: every row is the mean of all
    rows, _, _ = NNM(0).apply(col(0, 2, 4, 10), ones(4), PreaggContext(0, 0, 0))
    assert torch.equal(rows, col(4, 4, 4, 4))


def test_nnm_refuses_f_of_half_the_rows_at_run_time_too():
    with pytest.raises(ConfigError) as e:
        NNM(2).apply(col(0, 1, 2, 3), ones(4), PreaggContext(0, 0, 0))
    assert e.value.path == "defense.preaggregation_params.nnm.f"


# --------------------------------------------------------------------------- composition


def composed(steps: str, inner, n: int = 4, **params):
    cfg = parse_config({"fl": {"clients_per_round": n},
                        "defense": {"preaggregation": steps, "preaggregation_params": params}})
    return with_preaggregation(cfg, inner)


@pytest.mark.parametrize("round_idx", range(4))  # the shuffle differs per round; the result must not
def test_steps_run_in_the_configured_order(round_idx):
    # x = 0, 2, 4, 90, median behind the steps; without them median = (2+4)/2 = 3.
    # nnm+bucketing: NNM f=1 (3 nearest): 0→{0,2,4}=2, 2→2, 4→2, 90→{90,4,2}=32;
    #   buckets of 2 always pair 32 with a 2: rows {2, 17}, median (2+17)/2 = 9.5.
    # bucketing+nnm: pairs {0,2}{4,90} → 1, 47; {0,4}{2,90} → 2, 46; {0,90}{2,4} → 45, 3;
    #   NNM on 2 rows (f = ⌊1/2⌋ = 0) makes both the mean, 24 in every case; median 24.
    x = col(0, 2, 4, 90)
    c = ctx(4, round_idx)
    assert torch.equal(Median().aggregate(x, ones(4), c, {}).delta, torch.tensor([3.0, 6.0]))
    a = composed("nnm+bucketing", Median(), nnm={"f": 1}).aggregate(x, ones(4), c, {})
    b = composed("bucketing+nnm", Median()).aggregate(x, ones(4), c, {})
    assert torch.equal(a.delta, torch.tensor([9.5, 19.0]))
    assert torch.equal(b.delta, torch.tensor([24.0, 48.0]))
    assert a.metrics == {"nnm_f": 1, "bucketing_buckets": 2}
    assert b.metrics == {"bucketing_buckets": 2, "nnm_f": 0}


def test_each_step_draws_from_its_own_position():
    """Bucketing second in the list draws π from position 1, as `Preaggregated` numbers them."""
    x = col(0, 2, 4, 6, 10, 12)
    seen = []

    class Record:
        def aggregate(self, updates, weights, ctx, state):
            seen.append((updates.clone(), weights.clone(), ctx))
            return FedAvg().aggregate(updates, weights, ctx, state)

    composed("nnm+bucketing", Record(), n=6, nnm={"f": 0}).aggregate(x, ones(6), ctx(6, 7), {})
    mixed, _, _ = NNM(0).apply(x, ones(6), PreaggContext(0, 7, 0))
    want, want_w = bucket_means(mixed, ones(6), buckets(permutation(0, 7, 1, 6), 2))
    rows, w, inner_ctx = seen[0]
    assert torch.equal(rows, want) and torch.equal(w, want_w)
    assert inner_ctx.cohort_size == 3 and inner_ctx.client_indices == ()  # rows are buckets


@pytest.mark.parametrize("seed", range(5))
def test_fedavg_on_buckets_is_the_plain_mean_under_uniform_weights(seed):
    # n = 5, s = 2: bucket weights 2, 2, 1, so Σ W_b·mean_b = Σ x_i whatever π:
    # (0 + 2 + 4 + 6 + 8)/5 = 4; the halves in the bucket means are exact
    x = col(0, 2, 4, 6, 8) + torch.tensor([[1.0, 0.0]])
    c = AggregatorContext(seed, 3, 5, tuple(range(5)))
    out = composed("bucketing", FedAvg(), n=5).aggregate(x, ones(5), c, {})
    assert torch.equal(out.delta, torch.tensor([5.0, 8.0]))


def test_fedavg_on_buckets_weighs_each_by_its_members_weights():
    x = col(0, 2, 4, 6, 10)
    w = torch.tensor([1.0, 2, 3, 4, 5], dtype=torch.float64)
    c = AggregatorContext(2, 1, 5, tuple(range(5)))
    out = composed("bucketing", FedAvg(), n=5).aggregate(x, w, c, {})
    groups = buckets(permutation(2, 1, 0, 5), 2)
    num = sum(sum(w[i].item() for i in g) * sum(x[i, 0].item() for i in g) / len(g) for g in groups)
    assert out.delta[0].item() == pytest.approx(num / 15, rel=1e-6)  # float32 result of a float64 sum


def test_rows_are_scored_against_roles_only_while_they_are_clients():
    x = col(0, 1, 2, 3, 50, 4, 5)
    c = ctx(7)
    after_nnm = composed("nnm", Krum(1), n=7).aggregate(x, ones(7), c, {})
    assert after_nnm.accepted is not None and len(after_nnm.accepted) == 7
    after_buckets = composed("bucketing", Krum(None), n=7).aggregate(x, ones(7), c, {})
    assert after_buckets.accepted is None
    # the aggregator's own counts are of rows (⌈7/2⌉ = 4 buckets)
    assert after_buckets.metrics["agg_selected"] + after_buckets.metrics["agg_flagged"] == 4


def test_without_the_key_the_aggregator_is_returned_as_it_is_and_fedavg_still_streams():
    fedavg = FedAvg()
    assert with_preaggregation(parse_config({}), fedavg) is fedavg
    wrapped = composed("nnm", fedavg)
    assert isinstance(wrapped, Preaggregated) and with_preaggregation(
        parse_config({"fl": {"clients_per_round": 4}, "defense": {"preaggregation": "nnm"}}), wrapped) is wrapped


def round_inputs(n: int, roles=("benign",) * 5):
    results = [ClientResult(10 * i, 0, roles[i], 3 + i, torch.tensor([float(2 * i), float(i)]))
               for i in range(n)]
    plan = RoundPlan(2, tuple(ClientTask(2, r.client_index, r.slot, r.role, 0) for r in results))
    return results, plan


def test_the_round_stacks_for_fedavg_behind_a_step_and_applies_it():
    # uniform weights: FedAvg on the buckets = the plain mean (see above): (0+2+4+6+8)/5 = 4
    results, plan = round_inputs(5)
    state = SimulationState(2, torch.zeros(2), "h")
    cfg = parse_config({"fl": {"clients_per_round": 5},
                        "defense": {"weighting": "uniform", "preaggregation": "bucketing"}})
    fold = RoundFold(cfg, state, plan, [])
    assert fold.accumulator is None  # FedAvg streams without the key; here it gets rows
    new, stats = apply_round(cfg, state, plan, results, [])
    assert new.global_params.tolist() == [4.0, 2.0]
    assert stats.extra == {"bucketing_buckets": 3}
    # with n_k weights (3..7) the bucket weights are the members' sums: Σ W_b mean_b / 25
    weighted = parse_config({"fl": {"clients_per_round": 5}, "defense": {"preaggregation": "bucketing"}})
    new, _ = apply_round(weighted, state, plan, results, [])
    groups = buckets(permutation(0, 2, 0, 5), 2)
    want = sum(sum(3 + i for i in g) * sum(2.0 * i for i in g) / len(g) for g in groups) / 25
    assert new.global_params[0].item() == pytest.approx(want, rel=1e-6)


def test_flag_rates_in_the_round_after_nnm_but_not_after_bucketing():
    results, plan = round_inputs(5, roles=("benign", "benign", "attacker", "benign", "benign"))
    state = SimulationState(2, torch.zeros(2), "h")
    for steps, scored in (("nnm", True), ("bucketing", False), ("nnm+bucketing", False)):
        cfg = parse_config({"fl": {"clients_per_round": 5},
                            "defense": {"aggregator": "krum", "preaggregation": steps}})
        _, stats = apply_round(cfg, state, plan, results, [])
        assert ("flag_tpr" in stats.extra) is scored, steps


# --------------------------------------------------------------------------- config


def defense(**d):
    return parse_config({"fl": {"clients_per_round": 10}, "defense": d})


def test_the_spellings_of_one_pipeline_hash_equally_and_defaults_are_filled_in():
    a = defense(preaggregation="nnm+bucketing")
    b = defense(preaggregation=["nnm", "bucketing"], preaggregation_params={"bucketing": {"s": 2}})
    c = defense(preaggregation="nnm + bucketing", preaggregation_params={"nnm": {"f": None}})
    assert config_hash(a) == config_hash(b) == config_hash(c)
    assert a.defense.preaggregation == "nnm+bucketing"
    assert a.defense.preaggregation_steps == ("nnm", "bucketing")
    assert a.defense.preaggregation_params == {"nnm": {"f": None}, "bucketing": {"s": 2}}
    assert config_hash(defense(preaggregation="bucketing+nnm")) != config_hash(a)  # order matters
    assert config_hash(defense(preaggregation="bucketing", preaggregation_params={"bucketing": {"s": 3}})) \
        != config_hash(defense(preaggregation="bucketing"))
    # the flat view (MLflow params, a report's frame) holds scalars only, and reads back
    flat = flatten(a)
    assert flat["defense.preaggregation"] == "nnm+bucketing"
    assert flat["defense.preaggregation_params.bucketing.s"] == 2
    assert config_hash(parse_flat(flat)) == config_hash(a)
    assert config_hash(parse_config(a.model_dump(mode="json"))) == config_hash(a)


# Hashes computed before aggregators existed (tests/fl_core/test_aggregators_config.py's OLD);
# the attacked config names the attacker pool of that time (issue 25: `legacy-eligible` keeps it).
OLD = [
    ({}, "afad744cbbd6d3e1e54174811b9876a6f486f37b0403144c56654f0cb389af29",
     "cee929af3c6f589583f6b7ab1bca5f7045742f22cbf95e221c0c5a3d525dddc2"),
    ({"attack": {"kind": "pgd", "fraction": 0.033, "pool_rule": "legacy-eligible"},
      "defense": {"norm_bound": 3.0, "weighting": "uniform"}},
     "2a9b44eb4f4772420495546a9aa5adafc2cb0d1d2157eb2cfe5d4320fe85e8bb",
     "0611ed2d3ae62ee1b47c1cbad2c5bba6c7504ced51fda8e22748f1ff855bcb11"),
]


@pytest.mark.parametrize("raw,trial_key,checkpoint_key", OLD)
@pytest.mark.parametrize("empty", ["absent", None, [], "none"])
def test_configs_without_steps_keep_their_trial_keys(raw, trial_key, checkpoint_key, empty):
    d = dict(raw.get("defense", {}))
    if empty != "absent":
        d.update(preaggregation=empty, preaggregation_params={})
    cfg = parse_config({**raw, "defense": d})
    assert cfg.defense.preaggregation is None and cfg.defense.preaggregation_steps == ()
    assert config_hash(cfg) == trial_key and result_hash(cfg) == checkpoint_key


def test_the_frozen_old_shape_configs_keep_their_keys():
    """The 48 old-shape configs of tests/data/frozen_keys.json (tests/sweeper/test_frozen_keys.py
    checks them and every shipped grid too; this is the parse-only part, here for the new key)."""
    frozen = json.loads((REPO / "tests" / "data" / "frozen_keys.json").read_text())["old_shape"]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, (trial_key, checkpoint_key) in frozen.items():
            cfg = parse_config(json.loads(name))
            assert [config_hash(cfg), result_hash(cfg)] == [trial_key, checkpoint_key], name


def error(**d) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        defense(**d)
    return e.value


def test_unknown_or_malformed_steps_name_the_key_with_a_did_you_mean():
    e = error(preaggregation="buckting")
    assert e.path == "defense.preaggregation" and "did you mean `bucketing`" in e.allowed
    assert "bucketing, nnm" in e.allowed
    e = error(preaggregation=["nnm", "nmm"])
    assert e.path == "defense.preaggregation" and "did you mean `nnm`" in e.allowed
    for bad in ("nnm+", "", 3, ["nnm", 3]):
        e = error(preaggregation=bad)
        assert e.path == "defense.preaggregation" and "joined by '+'" in e.allowed, bad
    e = error(preaggregation="nnm+bucketing+nnm")
    assert e.path == "defense.preaggregation" and "nnm is named twice" in e.allowed


def test_bad_step_params_name_the_key():
    e = error(preaggregation="bucketing", preaggregation_params={"bucketing": {"s": 0}})
    assert e.path == "defense.preaggregation_params.bucketing.s" and "greater than or equal to 1" in e.allowed
    e = error(preaggregation="bucketing", preaggregation_params={"bucketing": {"s": "2"}})
    assert e.path == "defense.preaggregation_params.bucketing.s"  # strict: no strings for numbers
    e = error(preaggregation="bucketing", preaggregation_params={"bucketing": {"size": 2}})
    assert isinstance(e, UnknownKeyError) and e.path == "defense.preaggregation_params.bucketing.size"
    assert "parameters of bucketing: s (" in e.allowed
    e = error(preaggregation="bucketing", preaggregation_params={"nnm": {"f": 1}})
    assert isinstance(e, UnknownKeyError) and e.path == "defense.preaggregation_params.nnm"
    assert "a step named in defense.preaggregation (bucketing)" in e.allowed
    e = error(preaggregation="nnm", preaggregation_params={"nmm": {"f": 1}})
    assert "did you mean `nnm`" in e.allowed
    e = error(preaggregation_params={"nnm": {"f": 1}})  # params without the step
    assert e.path == "defense.preaggregation_params.nnm" and "none is named" in e.allowed
    e = error(preaggregation="nnm", preaggregation_params=[1])
    assert e.path == "defense.preaggregation_params"


def test_params_that_do_not_fit_the_cohort_are_refused_at_validation():
    defense(preaggregation="nnm", preaggregation_params={"nnm": {"f": 4}})  # 2·4 < 10
    e = error(preaggregation="nnm", preaggregation_params={"nnm": {"f": 5}})
    assert e.path == "defense.preaggregation_params.nnm.f" and "at most 4" in e.allowed and "n = 10" in e.allowed
    # after bucketing NNM gets ⌈10/2⌉ = 5 rows: f ≤ 2
    defense(preaggregation="bucketing+nnm", preaggregation_params={"nnm": {"f": 2}})
    e = error(preaggregation="bucketing+nnm", preaggregation_params={"nnm": {"f": 3}})
    assert e.path == "defense.preaggregation_params.nnm.f" and "n = 5" in e.allowed
    e = error(preaggregation="bucketing", preaggregation_params={"bucketing": {"s": 11}})
    assert e.path == "defense.preaggregation_params.bucketing.s" and "10 updates" in e.allowed
    # the aggregator is held to the rows the steps leave: Krum's n − f − 2 ≥ 1 with n = 5
    defense(aggregator="krum", aggregator_params={"f": 2}, preaggregation="bucketing")
    e = error(aggregator="krum", aggregator_params={"f": 3}, preaggregation="bucketing")
    assert e.path == "defense.aggregator_params.f" and "the aggregator sees 5 rows" in e.allowed
    defense(aggregator="krum", aggregator_params={"f": 3}, preaggregation="nnm")  # NNM keeps 10 rows
    # FoolsGold keeps a history per client: not behind buckets, fine behind NNM
    e = error(aggregator="foolsgold", preaggregation="bucketing")
    assert e.path == "defense.preaggregation" and "foolsgold" in e.allowed
    defense(aggregator="foolsgold", preaggregation="nnm")


def test_the_report_label_of_a_pipeline():
    from fl_core.preaggregators.base import pipeline_label

    c = defense(preaggregation="nnm+bucketing", preaggregation_params={"nnm": {"f": 2}})
    assert pipeline_label(c.defense.preaggregation, c.defense.preaggregation_params) == "NNM f=2 → bucketing s=2"
    assert pipeline_label(None) == "" and pipeline_label("nnm") == "NNM"
    # from a report's frame: a float for an int, and a step of another engine version
    assert pipeline_label("bucketing+trim", {"bucketing": {"s": 3.0}}) == "bucketing s=3 → trim"


def test_grids_can_vary_the_steps_and_their_params():
    assert is_plugin_param("defense.preaggregation_params.bucketing.s")
    assert not is_plugin_param("defense.preaggregation_params.s")
    assert "defense.preaggregation" in all_keys()
    assert {"defense.preaggregation_params.bucketing.s", "defense.preaggregation_params.nnm.f"} <= set(
        all_keys(plugins=True))


def test_parsing_the_key_does_not_import_torch():
    probe = ("import sys; from fl_core.config import parse_config; "
             "c = parse_config({'defense': {'preaggregation': 'nnm+bucketing', 'aggregator': 'fedavg'}}); "
             "print(c.defense.preaggregation_steps, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(REPO), "PATH": ""})
    assert out.stdout.strip() == "('nnm', 'bucketing') False"


# --------------------------------------------------------------------------- end to end

RAW = {
    "seed": 5,
    "fl": {"rounds": 2, "clients_per_round": 6, "local_epochs": 1, "batch_size": 5, "eval_every": 2},
    "attack": {"kind": "model-replacement", "fraction": 0.2, "frequency": 1, "num_tasks": 3},
}
DROP = {"round_seconds", "eval_seconds", "aggregate_seconds"}


def simulate(tiny_data, **d):
    sim = Simulation(parse_config({**RAW, "defense": d}), data=tiny_data)
    history = sim.run()
    return sim.state, [{k: v for k, v in m.items() if k not in DROP} for m in history]


def test_bucketing_then_krum_end_to_end_resumes_bit_exactly(tiny_data, tmp_path):
    cfg = parse_config({**RAW, "defense": {"aggregator": "krum", "preaggregation": "bucketing"}})
    straight = Simulation(cfg, data=tiny_data)
    history = [{k: v for k, v in m.items() if k not in DROP} for m in straight.run()]
    first = Simulation(cfg, data=tiny_data)
    first.step()
    save_state(tmp_path / "state.pt", first.state)
    resumed = Simulation(cfg, data=tiny_data, state=load_state(tmp_path / "state.pt", cfg))
    resumed.run()  # round 1's buckets come from (seed, round 1): nothing to carry
    assert torch.equal(straight.state.global_params, resumed.state.global_params)
    assert bool(torch.isfinite(straight.state.global_params).all())
    last = history[-1]
    assert last["num_attackers"] >= 1 and last["bucketing_buckets"] == 3
    assert last["agg_selected"] + last["agg_flagged"] == 3  # rows are the ⌈6/2⌉ buckets
    assert "flag_tpr" not in last and "flag_fpr" not in last
    plain, _ = simulate(tiny_data, aggregator="krum")
    assert not torch.equal(plain.global_params, straight.state.global_params)  # the step took effect


def test_nnm_then_median_end_to_end(tiny_data):
    state, history = simulate(tiny_data, aggregator="median", preaggregation="nnm")
    assert bool(torch.isfinite(state.global_params).all())
    assert history[-1]["nnm_f"] == 2  # ⌊(6 − 1)/2⌋
    plain, _ = simulate(tiny_data, aggregator="median")
    assert not torch.equal(plain.global_params, state.global_params)
