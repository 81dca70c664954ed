"""`fl.precision: bf16` on a CPU (issue 24): accepted only where the CPU has native bf16
arithmetic, checked where training runs; autocast with float32 master weights (and
channels-last weights) inside `precision_scope`; deterministic and resumable on one machine
like fp32 (torch.equal, not allclose).

The capability tests run everywhere (the detection is fed fake CPUs); the training tests need
a CPU with avx512_bf16 / amx_bf16 (aarch64: bf16) and skip elsewhere, naming what is missing.
"""

from __future__ import annotations

import contextlib
import pickle

import pytest
import torch
import torch.nn.functional as F

import fl_core.backends as backends
from fl_core.backends import (
    X86_BF16_FLAGS,
    CpuBf16Support,
    check_precision,
    cpu_bf16_support,
    precision_scope,
)
from fl_core.backends.vectorized import VectorizedBackend
from fl_core.client import ClientRunner
from fl_core.config import parse_config, result_hash
from fl_core.errors import ConfigError
from fl_core.models import CNN
from fl_core.params import get_flat, set_flat
from fl_core.simulate import Simulation, initial_state
from fl_core.state import load_state, save_state
from fl_core.training import apply_memory_format, memory_format_scope, sgd_step
from fl_core.types import ClientTask

CPU = torch.device("cpu")
TIMING = {"round_seconds", "eval_seconds", "aggregate_seconds"}
CAP = cpu_bf16_support()
needs_bf16 = pytest.mark.skipif(not CAP.supported, reason=f"needs native bf16 on the CPU: {CAP.reason()}")

RAW = {
    "seed": 11,
    "fl": {"rounds": 3, "clients_per_round": 4, "local_epochs": 1, "batch_size": 5, "eval_every": 1,
           "device": "cpu", "precision": "bf16"},
    "attack": {"kind": "pgd", "fraction": 0.2, "frequency": 2, "num_tasks": 3, "params": {"pgd_iterations": 2}},
    "defense": {"norm_bound": 2.0, "noise_sigma": 0.01},
}


def bf16_config(backend: str = "sequential", **fl) -> object:
    return parse_config({**RAW, "fl": {**RAW["fl"], "backend": backend, **fl}})


def strip(ms):
    return [{k: v for k, v in m.items() if k not in TIMING} for m in ms]


# -- the capability check: runs on every CPU ----------------------------------------------
ABSENT = CpuBf16Support(False, "Test CPU 9000 (no bf16)", "x86_64", X86_BF16_FLAGS, (), "/proc/cpuinfo")


@pytest.fixture
def no_bf16(monkeypatch):
    monkeypatch.setattr(backends, "cpu_bf16_support", lambda: ABSENT)


def test_bf16_without_native_support_names_the_key_the_cpu_and_the_flags(no_bf16, tiny_data):
    with pytest.raises(ConfigError) as err:
        check_precision("bf16", CPU)
    msg = str(err.value)
    assert err.value.path == "fl.precision" and err.value.value == "bf16"
    for part in ("`fl.precision`", "Test CPU 9000", "avx512_bf16", "amx_bf16", "fl.precision: fp32"):
        assert part in msg, (part, msg)
    # a Ray actor's error reaches the driver as itself
    again = pickle.loads(pickle.dumps(err.value))
    assert type(again) is ConfigError and str(again) == msg

    # validation accepts it (the driver may not be the machine that trains) ...
    cfg = parse_config({"fl": {"device": "cpu", "precision": "bf16"}, "attack": {"num_tasks": 2}})
    # ... and the run refuses it at its start, in the process that trains
    with pytest.raises(ConfigError, match=r"fl\.precision.*Test CPU 9000"):
        ClientRunner(cfg, tiny_data, "cpu")
    with pytest.raises(ConfigError, match="Test CPU 9000"):
        with precision_scope("bf16", CPU):
            pass
    check_precision("bf16", torch.device("cuda"))  # CUDA: not the CPU's business
    check_precision("fp32", CPU)


def test_tf32_stays_cuda_only_and_is_refused_at_validation():
    with pytest.raises(ConfigError, match=r"fl\.precision.*tf32 is CUDA-only"):
        parse_config({"fl": {"device": "cpu", "precision": "tf32"}})
    with pytest.raises(ConfigError, match="tf32 is CUDA-only"):
        check_precision("tf32", CPU)
    with pytest.raises(ConfigError, match="fp32 | tf32 | bf16"):
        check_precision("fp16", CPU)


@pytest.mark.parametrize("arch,flags,ok", [
    ("x86_64", {"avx512f", "avx512_bf16"}, True),
    ("x86_64", {"avx512f", "amx_bf16", "amx_tile"}, True),
    ("x86_64", {"avx512f", "avx512bw", "avx512_vnni"}, False),  # AVX-512 without BF16: emulated
    ("x86_64", {"avx2", "fma"}, False),
    ("aarch64", {"asimd", "bf16", "i8mm"}, True),
    ("aarch64", {"asimd", "sve"}, False),
    ("riscv64", {"bf16"}, False),
])
def test_detection_by_flags(monkeypatch, arch, flags, ok):
    monkeypatch.setattr(backends, "_cpuinfo", lambda: ("Some CPU", flags, "/proc/cpuinfo"))
    monkeypatch.setattr(backends.platform, "machine", lambda: arch)
    cap = cpu_bf16_support.__wrapped__()
    assert cap.supported is (ok and torch.backends.mkldnn.is_available())
    assert cap.model == "Some CPU"
    if not ok:
        assert "Some CPU" in cap.reason() and arch in cap.reason()
        if cap.required:
            assert all(f in cap.reason() for f in cap.required)


def test_this_machines_detection_agrees_with_torchs_own_report():
    """The /proc/cpuinfo reading against torch's cpuinfo (`torch.cpu.get_capabilities`,
    CPUID), where both exist, on whatever CPU runs the suite."""
    caps = getattr(torch.cpu, "get_capabilities", None)
    if caps is None or CAP.arch not in ("x86_64", "amd64"):
        pytest.skip(f"torch has no CPU capability report to compare with, or not x86-64 ({CAP.arch})")
    theirs = caps()
    if not any(k in theirs for k in X86_BF16_FLAGS):
        pytest.skip("torch's report names neither avx512_bf16 nor amx_bf16")
    assert bool(CAP.present) == any(theirs.get(k) for k in X86_BF16_FLAGS), (CAP, theirs)


# -- layout and the autocast weight cache: need no bf16 hardware ----------------------------
def test_channels_last_keeps_values_and_flat_order_and_fp32_keeps_layout():
    torch.manual_seed(0)
    model = CNN()
    flat = get_flat(model)
    apply_memory_format(model)  # outside a scope: nothing at all
    assert all(p.is_contiguous() for p in model.parameters())
    with memory_format_scope(torch.channels_last):
        apply_memory_format(model)
        params = list(model.parameters())
        apply_memory_format(model)  # idempotent, same Parameter objects
        assert [id(p) for p in model.parameters()] == [id(p) for p in params]
    assert model.conv1.weight.stride() == (9, 1, 3, 1) and model.conv2.weight.stride() == (288, 1, 96, 32)
    assert torch.equal(get_flat(model), flat)  # logical order, same values
    set_flat(model, flat + 1)
    assert torch.equal(get_flat(model), flat + 1) and model.conv2.weight.stride() == (288, 1, 96, 32)


def test_precision_scope_turns_the_autocast_weight_cache_off(monkeypatch):
    """With the cache on, one autocast region spanning many SGD steps feeds every forward the
    bf16 copy of the FIRST step's weights (the cache is keyed by tensor, not by version).
    The CUDA branch is checked by recording its autocast arguments (no GPU needed)."""
    seen = []
    real = torch.autocast

    def recording(device_type, **kw):
        seen.append((device_type, kw))
        return real("cpu", enabled=False)

    monkeypatch.setattr(torch, "autocast", recording)
    with precision_scope("bf16", torch.device("cuda")):
        pass
    assert seen == [("cuda", {"dtype": torch.bfloat16, "cache_enabled": False})]
    monkeypatch.setattr(backends, "cpu_bf16_support",
                        lambda: CpuBf16Support(True, "fake", "x86_64", X86_BF16_FLAGS, X86_BF16_FLAGS[:1], "test"))
    seen.clear()
    with precision_scope("bf16", CPU):
        pass
    assert seen == [("cpu", {"dtype": torch.bfloat16, "cache_enabled": False})]


# -- training under bf16: needs a CPU with native bf16 -----------------------------------------
def _train(one_scope: bool, steps: int = 6) -> torch.Tensor:
    """`steps` SGD steps (dropout on, from the global RNG seeded here) inside one
    `precision_scope` or one scope per step."""
    torch.manual_seed(3)
    model = CNN().train()
    g = torch.Generator().manual_seed(5)
    xs = torch.rand((steps, 4, 1, 28, 28), generator=g)
    ys = torch.randint(0, 10, (steps, 4), generator=g)
    with precision_scope("bf16", CPU) if one_scope else contextlib.nullcontext():
        for x, y in zip(xs, ys):
            with contextlib.nullcontext() if one_scope else precision_scope("bf16", CPU):
                sgd_step(model, x, y, 0.1)
    return get_flat(model)


@needs_bf16
def test_one_scope_over_many_steps_trains_like_one_scope_per_step():
    """Regression for the autocast weight cache: 6 SGD steps in one `precision_scope` equal
    6 steps in 6 scopes, bit for bit (with the cache on, the first would train 6 times
    from the first step's bf16 weights)."""
    one = _train(one_scope=True)
    each = _train(one_scope=False)
    assert torch.equal(one, each)


@needs_bf16
@pytest.mark.parametrize("backend,formulation", [("sequential", None), ("vectorized", "grouped"),
                                                 ("vectorized", "vmap")])
def test_both_backends_train_in_bf16_with_float32_weights(tiny_data, monkeypatch, backend, formulation):
    seen = []
    real_ce = F.cross_entropy

    def spy(logits, *a, **kw):  # what the loss gets: bf16 logits from inside autocast
        seen.append((logits.dtype, torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return real_ce(logits, *a, **kw)

    monkeypatch.setattr(F, "cross_entropy", spy)
    cfg = bf16_config(backend)
    runner = ClientRunner(cfg, tiny_data, "cpu")
    if formulation == "vmap":
        runner.backend = VectorizedBackend(runner.backend_context, formulation="vmap")
    assert runner.backend.name == backend
    tasks = [ClientTask(0, k, 0, "benign", 500 + k) for k in (1, 4, 6)]
    gp = initial_state(cfg).global_params
    out = runner.run(tasks, gp)
    assert seen and all(s == (torch.bfloat16, True, torch.bfloat16) for s in seen), set(seen)
    assert not torch.is_autocast_enabled("cpu")  # nothing leaks past the scope
    assert all(r.delta.dtype == torch.float32 and torch.isfinite(r.delta).all() and r.delta.abs().max() > 0
               for r in out)
    assert all(p.dtype == torch.float32 for p in runner.model.parameters())
    monkeypatch.setattr(F, "cross_entropy", real_ce)
    fp32 = ClientRunner(parse_config({**RAW, "fl": {**RAW["fl"], "backend": backend, "precision": "fp32"}}),
                        tiny_data, "cpu")
    if formulation == "vmap":
        fp32.backend = VectorizedBackend(fp32.backend_context, formulation="vmap")
    ref = fp32.run(tasks, gp)
    assert not any(torch.equal(a.delta, b.delta) for a, b in zip(out, ref))  # bf16 really rounded
    if backend == "sequential":
        assert runner.model.conv2.weight.stride() == (288, 1, 96, 32)  # channels-last under bf16
        assert fp32.model.conv2.weight.is_contiguous()  # fp32 untouched


@needs_bf16
@pytest.mark.parametrize("backend", ["sequential", "vectorized"])
def test_same_bf16_config_twice_gives_the_same_bits(tiny_data, backend):
    cfg = bf16_config(backend)
    a, b = Simulation(cfg, data=tiny_data), Simulation(cfg, data=tiny_data)
    ma, mb = a.run(), b.run()
    assert torch.equal(a.state.global_params, b.state.global_params)
    assert strip(ma) == strip(mb)
    assert a.state.global_params.dtype == torch.float32
    assert any(m["num_attackers"] for m in ma)  # attackers trained under bf16 too


@needs_bf16
def test_bf16_resume_after_save_load_is_bit_identical(tiny_data, tmp_path):
    cfg = bf16_config("sequential")
    straight = Simulation(cfg, data=tiny_data)
    m_straight = straight.run()
    first = Simulation(cfg, data=tiny_data)
    m1 = [first.step(), first.step()]
    save_state(tmp_path / "state.pt", first.state)
    resumed = Simulation(cfg, data=tiny_data, state=load_state(tmp_path / "state.pt", cfg))
    m2 = resumed.run()
    assert torch.equal(straight.state.global_params, resumed.state.global_params)
    assert strip(m_straight) == strip(m1 + m2)


def test_precision_is_in_the_result_hash():
    """A bf16 checkpoint never resumes an fp32 run or the reverse (they differ in bits)."""
    assert result_hash(bf16_config()) != result_hash(bf16_config(precision="fp32"))


@needs_bf16
def test_bf16_vectorized_chunks_change_no_bit(tiny_data):
    """`fl.vectorized_chunk` stays execution-only under bf16 (channels-last for every chunk
    size, see `vectorized._conv1_bmm`)."""
    tasks = [ClientTask(0, k, 0, "benign", 1_000 + 31 * k) for k in (4, 0, 9, 2, 11, 7, 5)]
    gp = initial_state(bf16_config()).global_params
    runs = {c: ClientRunner(bf16_config("vectorized", vectorized_chunk=c), tiny_data, "cpu").run(tasks, gp)
            for c in (1, 3, 7)}
    for c in (1, 3):
        assert all(torch.equal(a.delta, b.delta) for a, b in zip(runs[c], runs[7])), c
