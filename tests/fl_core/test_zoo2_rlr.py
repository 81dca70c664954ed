"""RLR (fl_core/aggregators/rlr.py): the sign rule on four small integer vectors worked by
hand, the authors' `compute_robustLR` + `agg_avg` transcribed
(TinfoilHat0/Defending-Against-Backdoors-with-Robust-Learning-Rate `src/aggregation.py`
@711ab52) and fed the same input, fl.server_lr as η through the round, order invariance,
a tiny end-to-end simulation, config errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fl_core.aggregators.base import AggregatorContext
from fl_core.aggregators.rlr import RLR, robust_lr_factor
from fl_core.config import parse_config
from fl_core.errors import ConfigError
from fl_core.round import apply_round
from fl_core.simulate import Simulation
from fl_core.state import SimulationState
from fl_core.types import ClientResult, ClientTask, RoundPlan

FOUR = torch.tensor([[1, -2, 3, 0, 4],
                     [2, -1, -1, 0, 4],
                     [3, -3, 2, 5, -4],
                     [2, 2, 1, 0, 4]], dtype=torch.float32)
CTX = AggregatorContext(0, 0, 4, (0, 1, 2, 3))


def test_sign_rule_worked_by_hand():
    # Σ sign per column: (4, −2, 2, 1, 2); θ = 2 → ρ = (+1, +1, +1, −1, +1).
    # Weights (1, 1, 1, 1): mean = (8, −4, 5, 5, 8)/4 = (2, −1, 1.25, 1.25, 2);
    # Δ = ρ·mean = (2, −1, 1.25, −1.25, 2); one coordinate in five flipped.
    assert robust_lr_factor(FOUR, 2).tolist() == [1, 1, 1, -1, 1]
    out = RLR(2).aggregate(FOUR, torch.ones(4, dtype=torch.float64), CTX, {})
    assert out.delta.tolist() == [2, -1, 1.25, -1.25, 2]
    assert out.metrics["rlr_flipped_fraction"] == 0.2
    # flipped mass: 1.25² / (4 + 1 + 1.5625 + 1.5625 + 4) = 1.5625 / 12.125
    assert out.metrics["rlr_flipped_mass"] == pytest.approx(1.5625 / 12.125, rel=1e-15)
    # θ = 3: columns 2, 3, 4, 5 have |Σ| < 3 → only the first keeps its sign
    assert robust_lr_factor(FOUR, 3).tolist() == [1, -1, -1, -1, -1]
    # a zero votes for no side: column 4 has three zeros and one 5 → |Σ| = 1
    assert robust_lr_factor(FOUR, 1)[3] == 1 and robust_lr_factor(FOUR, 2)[3] == -1


def test_a_coordinate_nobody_moved_is_not_counted_as_flipped():
    # column 3 all zero: |Σ sign| = 0 < θ → ρ = −1, but the mean there is 0, so nothing is
    # stepped backwards; column 2 (signs +, −, +, −) is flipped for real: 1 of 3 coordinates
    u = torch.tensor([[1, 1, 0], [1, -3, 0], [1, 1, 0], [1, -3, 0]], dtype=torch.float32)
    assert robust_lr_factor(u, 2).tolist() == [1, -1, -1]
    out = RLR(2).aggregate(u, torch.ones(4, dtype=torch.float64), CTX, {})
    assert out.delta.tolist() == [1, 1, 0]
    assert out.metrics["rlr_flipped_fraction"] == pytest.approx(1 / 3, rel=1e-15)
    assert out.metrics["rlr_flipped_mass"] == 0.5  # mean (1, −1, 0): 1 of the squared norm 2


def test_weighted_mean_uses_the_fedavg_weights():
    # weights (1, 1, 2, 0): mean = (1 + 2 + 6 + 0, ...)/4; column 1: 9/4 = 2.25
    out = RLR(1).aggregate(FOUR, torch.tensor([1.0, 1.0, 2.0, 0.0], dtype=torch.float64), CTX, {})
    assert out.delta[0].item() == 2.25


def authors_rlr(updates: dict, sizes: dict, theta: float, server_lr: float) -> torch.Tensor:
    """compute_robustLR and agg_avg of the authors' Aggregation, and the step lr_vector ·
    aggregated_updates (aggregate_updates), transcribed."""
    agent_updates_sign = [torch.sign(u) for u in updates.values()]
    sm_of_signs = torch.abs(sum(agent_updates_sign))
    sm_of_signs[sm_of_signs < theta] = -server_lr
    sm_of_signs[sm_of_signs >= theta] = server_lr
    sm_updates, total_data = 0, 0
    for _id, u in updates.items():
        sm_updates += sizes[_id] * u
        total_data += sizes[_id]
    return sm_of_signs * (sm_updates / total_data)


@pytest.mark.parametrize("theta", [1, 4, 8, 11])
def test_agrees_with_the_authors_transcription(theta):
    g = torch.Generator().manual_seed(theta)
    ups = torch.randn(12, 300, generator=g)
    ups[:, :20] = 0.0  # zeros vote for no side in both
    sizes = torch.randint(1, 50, (12,), generator=g).to(torch.float64)
    ours = RLR(theta).aggregate(ups, sizes, AggregatorContext(0, 0, 12, tuple(range(12))), {}).delta
    theirs = authors_rlr({i: ups[i] for i in range(12)}, {i: float(sizes[i]) for i in range(12)}, theta, 1.0)
    # same signs → same ±1 exactly; the means differ only by float32 (theirs) vs float64
    # accumulation (ours, rounded once): |diff| ≤ 12 terms × 2⁻²⁴ relative of the largest term
    assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    assert torch.equal(robust_lr_factor(ups, theta), torch.where(
        torch.abs(sum(torch.sign(u) for u in ups)) >= theta, 1.0, -1.0))


def results(n=6, d=5):
    res = [ClientResult(k, 0, "benign", 10, FOUR[k % 4] * (k + 1)) for k in range(n)]
    return res, RoundPlan(0, tuple(ClientTask(0, r.client_index, 0, r.role, 0) for r in res))


def test_server_lr_is_eta_through_the_round():
    # FedAvg weights 10 each: mean of FOUR[k%4]·(k+1) over k = 0..5; the engine applies
    # server_lr · ρ · mean. Two server_lr values give proportional steps (η = fl.server_lr).
    res, plan = results()
    steps = []
    for lr in (1.0, 0.5):
        c = parse_config({"fl": {"clients_per_round": 6, "server_lr": lr},
                          "defense": {"aggregator": "rlr", "aggregator_params": {"theta": 4}}})
        new, stats = apply_round(c, SimulationState(0, torch.zeros(5), "h"), plan, res, [])
        steps.append(new.global_params)
        assert "rlr_flipped_fraction" in stats.as_metrics()
    rho = robust_lr_factor(torch.stack([r.delta for r in res]), 4)
    mean = torch.stack([r.delta for r in res]).to(torch.float64).mean(0).to(torch.float32)
    assert torch.allclose(steps[0], rho * mean, rtol=1e-6)
    assert torch.equal(steps[1] * 2, steps[0])  # × 0.5 and × 2 are exact


def test_round_is_bit_identical_under_any_result_order():
    c = parse_config({"fl": {"clients_per_round": 6}, "defense": {"aggregator": "rlr", "aggregator_params": {"theta": 3}}})
    res, plan = results()
    base, s = apply_round(c, SimulationState(0, torch.zeros(5), "h"), plan, res, [])
    for perm in ([5, 4, 3, 2, 1, 0], [2, 0, 5, 1, 3, 4]):
        again, s2 = apply_round(c, SimulationState(0, torch.zeros(5), "h"), plan, [res[i] for i in perm], [])
        assert torch.equal(base.global_params, again.global_params) and s.as_metrics() == s2.as_metrics()


def test_tiny_simulation(tiny_data):
    c = parse_config({
        "seed": 5,
        "fl": {"rounds": 2, "clients_per_round": 6, "local_epochs": 1, "batch_size": 5, "eval_every": 2},
        "attack": {"kind": "model-replacement", "fraction": 0.2, "frequency": 1, "num_tasks": 3},
        "defense": {"aggregator": "rlr", "aggregator_params": {"theta": 4}},
    })
    runs = [Simulation(c, data=tiny_data) for _ in range(2)]
    hists = [s.run() for s in runs]
    assert torch.equal(runs[0].state.global_params, runs[1].state.global_params)
    last = hists[0][-1]
    assert 0.0 < last["rlr_flipped_fraction"] < 1.0 and "flag_tpr" not in last
    assert bool(torch.isfinite(runs[0].state.global_params).all())


def test_theta_above_the_cohort_is_a_config_error():
    with pytest.raises(ConfigError, match=r"theta.*at most fl.clients_per_round = 6"):
        parse_config({"fl": {"clients_per_round": 6}, "defense": {"aggregator": "rlr", "aggregator_params": {"theta": 7}}})
    with pytest.raises(ConfigError, match="theta"):
        parse_config({"fl": {"clients_per_round": 30}, "defense": {"aggregator": "rlr", "aggregator_params": {"theta": 0}}})
    assert parse_config({"fl": {"clients_per_round": 30}, "defense": {"aggregator": "rlr"}}).defense.aggregator_params == {"theta": 8}
