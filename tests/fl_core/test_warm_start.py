"""Warm starts (`fl.init`): a run continues from a finished run's weights and round."""

from __future__ import annotations

import pytest
import torch

from fl_core.config import parse_config
from fl_core.errors import ConfigError
from fl_core.simulate import Simulation, initial_state
from fl_core.state import save_state

CLEAN = {
    "seed": 4,
    "fl": {"rounds": 4, "clients_per_round": 4, "local_epochs": 1, "batch_size": 5},
    "attack": {"num_tasks": 2},  # backdoor accuracy is measured without an attack too
}


def test_warm_start_continues_bit_identically(tiny_data, tmp_path):
    """Every draw derives from (seed, round, client), so 2 warm-up rounds saved + 2 rounds
    warm-started from them give the same bits as 4 rounds straight."""
    straight = Simulation(parse_config(CLEAN), data=tiny_data)
    m_straight = straight.run()

    warm = Simulation(parse_config({**CLEAN, "fl": {**CLEAN["fl"], "rounds": 2}}), data=tiny_data)
    warm.run()
    save_state(tmp_path / "warm" / "state.pt", warm.state)

    cfg = parse_config({**CLEAN, "fl": {**CLEAN["fl"], "init": str(tmp_path / "warm")}})
    cont = Simulation(cfg, data=tiny_data)
    assert cont.state.round_idx == 2
    m_cont = cont.run()
    assert torch.equal(cont.state.global_params, straight.state.global_params)
    assert [m["round"] for m in m_cont] == [3, 4]
    assert m_cont[-1]["main_acc"] == m_straight[-1]["main_acc"]


def test_attack_start_round_counts_from_round_zero_of_the_warm_up(tiny_data, tmp_path):
    warm = Simulation(parse_config({**CLEAN, "fl": {**CLEAN["fl"], "rounds": 2}}), data=tiny_data)
    warm.run()
    save_state(tmp_path / "s.pt", warm.state)
    cfg = parse_config({**CLEAN, "fl": {**CLEAN["fl"], "init": str(tmp_path / "s.pt")},
                        "attack": {"kind": "model-replacement", "fraction": 0.1, "num_tasks": 2,
                                   "frequency": 1, "start_round": 3}})
    ms = Simulation(cfg, data=tiny_data).run()
    assert [m["num_attackers"] for m in ms] == [0, 1]  # round index 2 clean, round index 3 attacked


def test_warm_start_errors_name_the_key(tiny_data, tmp_path):
    with pytest.raises(ConfigError) as e:
        initial_state(parse_config({"fl": {"init": str(tmp_path / "nope")}}))
    assert e.value.path == "fl.init"
    warm = Simulation(parse_config({**CLEAN, "fl": {**CLEAN["fl"], "rounds": 2}}), data=tiny_data)
    warm.run()
    save_state(tmp_path / "state.pt", warm.state)
    with pytest.raises(ConfigError) as e:
        initial_state(parse_config({"fl": {"rounds": 2, "init": str(tmp_path)}}))
    assert e.value.path == "fl.rounds" and "2 rounds" in e.value.allowed
