"""Large cohorts, the client side (issue 11, item 2): the vectorized backend trains the benign
cohort in chunks of at most `fl.vectorized_chunk` clients, and a client's update does not
depend on the chunk it trained in (torch.equal on CPU: each op of the batched step
computes every client's part on its own, see `vectorized._conv1_bmm`). The key is
execution-only: validated, and never in a config hash or trial key."""

from __future__ import annotations

import pytest
import torch

from fl_core.backends.vectorized import CPU_CHUNK, PARAM_COPIES, VectorizedBackend
from fl_core.client import ClientRunner
from fl_core.config import EXECUTION_ONLY_KEYS, config_hash, parse_config, result_hash
from fl_core.errors import ConfigError
from fl_core.simulate import Simulation, initial_state
from fl_core.types import ClientTask

TIMING = ("round_seconds", "eval_seconds", "aggregate_seconds")


def cfg(chunk="auto", backend="vectorized", **extra):
    return parse_config({
        "seed": 9,
        "fl": {"rounds": 2, "clients_per_round": 7, "local_epochs": 2, "batch_size": 5, "device": "cpu",
               "backend": backend, "vectorized_chunk": chunk},
        "attack": {"kind": "model-replacement", "fraction": 0.2, "frequency": 1, "num_tasks": 2, "max_tasks": 3},
        **extra,
    })


def spy_chunks(monkeypatch) -> list[int]:
    """Record the size of every chunk the vectorized backend trains."""
    sizes: list[int] = []
    real = VectorizedBackend._train_chunk

    def wrapped(self, tasks, gp, cohort):
        sizes.append(len(tasks))
        return real(self, tasks, gp, cohort)

    monkeypatch.setattr(VectorizedBackend, "_train_chunk", wrapped)
    return sizes


def test_chunk_sizes_1_3_and_all_give_identical_updates(tiny_data, monkeypatch):
    """Seven benign clients of 8–19 examples (batch 5: unequal numbers of lock-steps, so
    clients leave the stack at different steps), dropout on, two epochs."""
    tasks = [ClientTask(0, k, 0, "benign", 1_000 + 31 * k) for k in (4, 0, 9, 2, 11, 7, 5)]
    gp = initial_state(cfg()).global_params
    sizes = spy_chunks(monkeypatch)
    runs = {}
    for chunk in (1, 3, len(tasks)):
        sizes.clear()
        runs[chunk] = ClientRunner(cfg(chunk), tiny_data, "cpu").run(tasks, gp)
        assert max(sizes) <= chunk and sum(sizes) == len(tasks)
        assert len(sizes) == -(-len(tasks) // chunk)
    for chunk in (1, 3):
        for a, b in zip(runs[chunk], runs[len(tasks)]):
            assert (a.client_index, a.slot, a.num_examples) == (b.client_index, b.slot, b.num_examples)
            assert torch.equal(a.delta, b.delta), (chunk, a.client_index)
            assert a.metrics == b.metrics
    assert len({r.num_examples for r in runs[1]}) > 2  # the clients really were unequal
    assert all(float(r.delta.abs().max()) > 0 for r in runs[1])


def test_a_chunked_simulation_with_attackers_equals_the_unchunked_one(tiny_data):
    runs = []
    for chunk in (2, "auto"):
        sim = Simulation(cfg(chunk), data=tiny_data)
        hist = [{k: v for k, v in m.items() if k not in TIMING} for m in sim.run()]
        runs.append((sim.state.global_params, hist))
    assert torch.equal(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1]
    assert any(m["num_attackers"] for m in runs[0][1])


def test_chunk_size_auto_on_cpu_and_the_override(tiny_data):
    vec = ClientRunner(cfg(), tiny_data, "cpu").backend
    assert vec.chunk_size(1_000) == CPU_CHUNK and vec.chunk_size(5) == 5 and vec.chunk_size(0) == 1
    assert ClientRunner(cfg(3), tiny_data, "cpu").backend.chunk_size(1_000) == 3
    params = sum(p.numel() for p in vec.fmodel.parameters())
    # the CUDA sizing's estimate covers at least the weights' copies and one batch's outputs
    assert vec.bytes_per_client() > 4 * PARAM_COPIES * params + 4 * 5 * (32 * 26 * 26 + 64 * 24 * 24)
    seq = ClientRunner(cfg(backend="sequential"), tiny_data, "cpu").backend
    assert seq.chunk_size(1_000) == 1  # one update at a time


@pytest.mark.parametrize("bad", [0, -3, 2.5, "big", True, None])
def test_vectorized_chunk_is_validated(bad):
    with pytest.raises(ConfigError, match=r"fl\.vectorized_chunk.*auto, or an integer ≥ 1"):
        parse_config({"fl": {"vectorized_chunk": bad}})


def test_vectorized_chunk_is_execution_only_and_in_no_hash():
    from sweeper.report.load import NON_CELL_KEYS  # the report never splits cells on it

    a, b = cfg("auto"), cfg(16)
    assert b.fl.vectorized_chunk == 16
    assert config_hash(a) == config_hash(b)  # the trial key
    assert result_hash(a) == result_hash(b)  # the checkpoint guard: resume with another chunk
    assert "fl.vectorized_chunk" in EXECUTION_ONLY_KEYS and "fl.vectorized_chunk" in NON_CELL_KEYS
    assert config_hash(cfg(backend="sequential")) != config_hash(a)  # a hash still sees fl.*
