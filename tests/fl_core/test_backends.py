"""Client-training backends (issue 4): registry, sequential = the reference loop bit for
bit, vectorized = sequential within float tolerance (dropout off) and statistically (dropout
on), per-client dropout streams, precision validation. CPU only, a few seconds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fl_core.backends import (
    AUTO_BY_DEVICE,
    BACKENDS,
    check_precision,
    make_backend,
    precision_scope,
    resolve_backend_name,
)
from fl_core.backends.sequential import SequentialBackend
from fl_core.backends.vectorized import VectorizedBackend, dropout_keys, hash32, keyed_keep_scale
from fl_core.client import ClientRunner
from fl_core.training import local_train, torch_threads
from fl_core.config import parse_config
from fl_core.data.base import from_writer_arrays
from fl_core.errors import ConfigError, UnknownComponentError
from fl_core.params import get_flat
from fl_core.rng import client_rng_scope
from fl_core.simulate import Simulation, initial_state
from fl_core.types import ClientTask

CPU = torch.device("cpu")
SIZES = (3, 8, 17, 26, 11)  # batch 8: one client smaller than a batch, one exactly a batch
SMALL = (3, 8, 10)  # the same cases, fewer images: for the (slow) float64 run


def learnable_data(sizes=SIZES, seed: int = 0, test_per_writer: int = 12):
    """Digits a CNN learns in a few steps: label c is an ink block at a position set by c,
    plus pixel noise. Every writer owns some 7s (the backdoor selection needs them)."""
    rng = np.random.default_rng(seed)

    def images(labels):
        px = rng.integers(200, 256, (len(labels), 28, 28)).astype(np.uint8)
        for i, c in enumerate(labels):
            r, col = 3 + 6 * (c // 4), 3 + 6 * (c % 4)
            px[i, r : r + 5, col : col + 5] = rng.integers(0, 40, (5, 5))
        return px

    train, test = {}, {}
    for k, n in enumerate(sizes):
        lab = rng.integers(0, 10, n).astype(np.int64)
        lab[0] = 7
        train[f"w{k:02d}"] = (images(lab), lab)
        tl = rng.integers(0, 10, test_per_writer).astype(np.int64)
        test[f"w{k:02d}"] = (images(tl), tl)
    return from_writer_arrays(train, test, "learnable")


def config(backend: str = "sequential", **fl):
    base = {"local_epochs": 2, "batch_size": 8, "client_lr": 0.1, "device": "cpu", "backend": backend,
            "clients_per_round": len(SIZES), "eval_every": 1}
    base.update(fl)
    return parse_config({"seed": 3, "fl": base, "attack": {"num_tasks": 2}})


def tasks_for(clients, round_idx: int = 0):
    return [ClientTask(round_idx, k, 0, "benign", 10_000 + 97 * k + round_idx) for k in clients]


def no_dropout(runner: ClientRunner) -> None:
    """The model variant with dropout disabled (p = 0), for exact-arithmetic comparisons."""
    for m in runner.model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0


@pytest.fixture(scope="module")
def data():
    return learnable_data()


@pytest.fixture(scope="module")
def small():
    return learnable_data(SMALL)


def use_float64(monkeypatch, runner: ClientRunner) -> ClientRunner:
    """Switch the engine to float64: `to_input` makes float64 images (patched where the two
    backends look it up) and the runner's model becomes float64."""
    import fl_core.backends.vectorized as vec_mod
    import fl_core.training as training_mod

    def to_input64(pixels_u8):
        return pixels_u8.unsqueeze(1).to(torch.float64).div_(255.0)

    monkeypatch.setattr(training_mod, "to_input", to_input64)
    monkeypatch.setattr(vec_mod, "to_input", to_input64)
    runner.model.double()
    return runner


@pytest.fixture(scope="module")
def gp():
    return initial_state(config()).global_params


# -- registry ---------------------------------------------------------------------------
def test_registry_is_read_only_and_names_the_backends():
    assert set(BACKENDS) == {"sequential", "vectorized"}
    with pytest.raises(TypeError):
        BACKENDS["fast"] = BACKENDS["sequential"]  # type: ignore[index]
    assert resolve_backend_name("auto", torch.device("cpu")) == "sequential"
    assert resolve_backend_name("auto", torch.device("cuda")) == "vectorized"
    assert resolve_backend_name("vectorized", torch.device("cpu")) == "vectorized"
    assert set(AUTO_BY_DEVICE.values()) <= set(BACKENDS)


def test_unknown_backend_name_lists_the_valid_ones(data):
    runner = ClientRunner(config(), data)
    with pytest.raises(UnknownComponentError, match="sequential, vectorized") as e:
        make_backend("warp-drive", runner.backend_context)
    assert e.value.kind == "backend" and e.value.name == "warp-drive"
    with pytest.raises(ConfigError, match="fl.backend"):
        parse_config({"fl": {"backend": "warp-drive"}})


def test_runner_builds_the_configured_backend(data):
    assert isinstance(ClientRunner(config("auto"), data).backend, SequentialBackend)  # CPU → sequential
    assert isinstance(ClientRunner(config("vectorized"), data).backend, VectorizedBackend)


def test_backends_refuse_attackers(data, gp):
    runner = ClientRunner(config("vectorized"), data)
    bad = [ClientTask(0, 1, 0, "attacker", 5, boost=2.0)]
    for backend in (runner.backend, SequentialBackend(runner.backend_context)):
        with pytest.raises(ValueError, match="attack plug-in"):
            backend.train(bad, gp, runner.cohort)


# -- sequential = the engine's reference loop, bit for bit -----------------------------------
def test_sequential_is_bit_identical_to_the_reference_loop_and_attackers_still_attack(data, gp):
    cfg = parse_config({"seed": 3, "fl": {"local_epochs": 2, "batch_size": 8, "device": "cpu",
                                          "backend": "sequential"},
                        "attack": {"kind": "model-replacement", "fraction": 0.2, "num_tasks": 2,
                                   "recipe": "union"}})  # the union recipe is local_train on own ∪ D_mal
    runner = ClientRunner(cfg, data)
    tasks = tasks_for([2, 0, 4])
    tasks.insert(1, ClientTask(0, 3, 0, "attacker", 777, boost=5.0))
    got = runner.run(tasks, gp)
    assert [r.client_index for r in got] == [2, 3, 0, 4] and [r.role for r in got][1] == "attacker"

    model = type(runner.model)()
    for t, r in zip(tasks, got):
        gen = torch.Generator()
        gen.manual_seed(t.seed)
        own = runner.cohort.client(t.client_index)
        with client_rng_scope(t.seed), torch_threads(cfg.fl.threads):
            if t.role == "attacker":
                want, metrics = local_train(model, gp, own.cat(runner.task.malicious(own)), runner.hp, gen)
                want = t.boost * want
            else:
                want, metrics = local_train(model, gp, own, runner.hp, gen)
        assert torch.equal(r.delta, want), t
        assert r.metrics == metrics and r.num_examples == len(own)


# -- vectorized = sequential ----------------------------------------------------------------
def test_runner_sends_benign_tasks_to_the_backend_and_attackers_to_the_plug_in(data, gp):
    """Mixed roles through `ClientRunner.run` with the vectorized backend: results come back
    in task order, the attacker's update is the attack plug-in's (bit for bit the same as
    with the sequential backend), the benign ones the vectorized backend's."""
    att = {"kind": "model-replacement", "fraction": 0.2, "num_tasks": 2}
    cfgs = {b: parse_config({"seed": 3, "fl": {"local_epochs": 1, "batch_size": 8, "device": "cpu", "backend": b},
                             "attack": att}) for b in ("sequential", "vectorized")}
    tasks = tasks_for([4, 1])
    tasks.insert(1, ClientTask(0, 0, 0, "attacker", 555, boost=3.0))
    runner = ClientRunner(cfgs["vectorized"], data)
    got = runner.run(tasks, gp)
    ref = ClientRunner(cfgs["sequential"], data).run(tasks, gp)
    assert [(r.client_index, r.role) for r in got] == [(4, "benign"), (0, "attacker"), (1, "benign")]
    assert torch.equal(got[1].delta, ref[1].delta)
    with torch_threads(runner.config.fl.threads):  # the runner's thread count: same bits
        alone = runner.backend.train([tasks[0], tasks[2]], gp, runner.cohort)
    assert torch.equal(got[0].delta, alone[0].delta) and torch.equal(got[2].delta, alone[1].delta)
    assert not torch.equal(got[0].delta, ref[0].delta)  # benign ones really went through vectorized


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


U32 = 2.0**-24  # float32 unit roundoff
#: The longest sum in one SGD step of the CNN at batch ≤ 8: fc1's 9216-term dot products
#: (the backward's longest, conv1's weight gradient, sums 8·26·26 = 5408 terms).
N_MAX = 9216


def reorder_bound(fp32_vs_fp64: float) -> float:
    """How far two float32 runs of the same training may differ when they only sum in a
    different order or blocking (sequential vs batched/grouped/vmap kernels).

    `fp32_vs_fp64` is the relative distance of one of them from the same computation in
    float64 (whose own rounding, ~1e-16, is negligible), measured in the test itself: it is
    how much this SGD trajectory amplifies the rounding of those kernels on this machine.
    A length-n sum's rounding is ~√n·u when its additions' errors are independent (what a
    measured run shows) and at most n·u in any order (Higham's γ_n), i.e. √n times more;
    so the other run is within √N_MAX·e of float64, and within (1 + √N_MAX)·e of the first.
    Floored at u in case the measured distance happens to be exactly 0."""
    return (1 + math.sqrt(N_MAX)) * max(fp32_vs_fp64, U32)


@pytest.mark.parametrize("formulation", ["grouped", "vmap"])
def test_vectorized_equals_sequential_without_dropout_on_unequal_clients(data, gp, formulation, monkeypatch):
    """Dropout off: the same steps, client by client — same per-epoch permutations, same
    batch boundaries with the last partial batch (a client smaller than one batch, one of
    exactly one batch), the same mean loss over real examples — so the same weights up to
    float32 rounding, and the same train_loss. The bound is `reorder_bound` of each client's
    own float32-vs-float64 distance, measured here on the sequential path (a few 1e-6 on
    this data; vmap's kernels sum less favourably, up to ~1.5e-4 measured on one AMD EPYC);
    an algorithmic difference (a batch boundary, a loss mean) moves the update by > 1e-2.

    lr 0.03 rather than the paper's 0.1: at 0.1 the 26-image client's SGD amplifies rounding
    differences (its float32 trajectory drifts a few % from its own float64 trajectory, in
    either backend), which would hide an algorithmic difference in noise; the float64 test
    below checks lr 0.1 exactly."""
    runner = ClientRunner(config("sequential", client_lr=0.03), data)
    no_dropout(runner)
    tasks = tasks_for([3, 0, 4, 1, 2])  # task order ≠ size order; sizes 26, 3, 11, 8, 17
    with torch_threads(1):
        a = SequentialBackend(runner.backend_context).train(tasks, gp, runner.cohort)
        b = VectorizedBackend(runner.backend_context, formulation).train(tasks, gp, runner.cohort)
    assert [r.client_index for r in b] == [t.client_index for t in tasks]
    ref = ClientRunner(config("sequential", client_lr=0.03), data)
    no_dropout(use_float64(monkeypatch, ref))
    with torch_threads(1):
        a64 = SequentialBackend(ref.backend_context).train(tasks, gp.double(), ref.cohort)
    for x, y, z in zip(a, b, a64):
        assert y.num_examples == x.num_examples == SIZES[x.client_index]
        assert x.delta.abs().max() > 1e-3  # it trained
        bound = reorder_bound(rel_err(x.delta, z.delta))
        assert rel_err(y.delta, x.delta) <= bound, (x.client_index, rel_err(y.delta, x.delta), bound)
        loss_bound = reorder_bound(abs(x.metrics["train_loss"] / z.metrics["train_loss"] - 1))
        assert y.metrics["train_loss"] == pytest.approx(x.metrics["train_loss"], rel=loss_bound, abs=0)
        assert y.delta.dtype == torch.float32
        assert y.delta.untyped_storage().nbytes() == y.delta.numel() * 4  # own storage, not a cohort view


def test_vectorized_equals_sequential_in_float64_at_the_paper_lr(small, gp, monkeypatch):
    """float64, lr 0.1, dropout off: the two backends agree to float64 rounding, so any
    float32 difference is rounding, not a different computation. Bound: `reorder_bound` of
    the float32 run's distance from float64 (measured here, same clients and lr), scaled
    from the float32 to the float64 unit roundoff (2^-24 → 2^-53): ~1e-12 (measured ~1e-15)."""
    tasks = tasks_for([2, 0, 1])  # sizes 10, 3, 8
    runner32 = ClientRunner(config("sequential"), small)
    no_dropout(runner32)
    a32 = SequentialBackend(runner32.backend_context).train(tasks, gp, runner32.cohort)
    runner = use_float64(monkeypatch, ClientRunner(config("sequential"), small))
    no_dropout(runner)
    a = SequentialBackend(runner.backend_context).train(tasks, gp.double(), runner.cohort)
    b = VectorizedBackend(runner.backend_context).train(tasks, gp.double(), runner.cohort)
    for x, y, x32 in zip(a, b, a32):
        assert y.delta.dtype == torch.float64 and x.delta.abs().max() > 1e-3
        bound = reorder_bound(rel_err(x32.delta, x.delta)) * 2.0**-29
        assert rel_err(y.delta, x.delta) < bound, (rel_err(y.delta, x.delta), bound)
        loss_bound = reorder_bound(abs(x32.metrics["train_loss"] / x.metrics["train_loss"] - 1)) * 2.0**-29
        assert y.metrics["train_loss"] == pytest.approx(x.metrics["train_loss"], rel=loss_bound, abs=0)


def test_vectorized_client_result_does_not_depend_on_its_cohort(data, gp, monkeypatch):
    """Dropout on: each client's masks are keyed by its own seed and steps, so training it
    alone, or among others in any order, gives the same update; the masks are really
    applied (the update differs from the dropout-free one); and the hand-batched CNN
    (`grouped`) equals `vmap` over `fl_core.models.CNN`, dropout placement included.
    "Same" is up to float32 summation order: `reorder_bound` of each client's distance from
    the same cohort trained in float64, measured here."""
    runner = ClientRunner(config("vectorized", local_epochs=1, client_lr=0.03), data)
    vec = runner.backend
    assert vec.formulation == "grouped"
    with torch_threads(1):
        cohort = vec.train(tasks_for([0, 1, 2, 3, 4]), gp, runner.cohort)
        reordered = vec.train(tasks_for([4, 2, 0, 3, 1]), gp, runner.cohort)
        alone = vec.train(tasks_for([2]), gp, runner.cohort)[0]
        via_vmap = VectorizedBackend(runner.backend_context, "vmap").train(tasks_for([0, 1, 2, 3, 4]), gp, runner.cohort)
        no_dropout(runner)
        plain = VectorizedBackend(runner.backend_context).train(tasks_for([2]), gp, runner.cohort)[0]
        ref = use_float64(monkeypatch, ClientRunner(config("vectorized", local_epochs=1, client_lr=0.03), data))
        cohort64 = ref.backend.train(tasks_for([0, 1, 2, 3, 4]), gp.double(), ref.cohort)
    bound = [reorder_bound(rel_err(x.delta, z.delta)) for x, z in zip(cohort, cohort64)]
    assert rel_err(alone.delta, cohort[2].delta) <= bound[2]
    assert rel_err(reordered[1].delta, cohort[2].delta) <= bound[2]
    assert rel_err(reordered[0].delta, cohort[4].delta) <= bound[4]
    for x, y, b in zip(cohort, via_vmap, bound):
        assert rel_err(y.delta, x.delta) <= b
    # dropout: far beyond rounding. The bound is measured, so it moves with the machine's
    # kernels (under 1e-3 on the AMD EPYC of earlier runs, 6.8e-3 on an Intel Xeon, where
    # the masks moved the update by 0.84): compare against it, not a constant, plus an
    # absolute floor so that a vanishing mask cannot pass either.
    dropout_effect = rel_err(plain.delta, alone.delta)
    assert dropout_effect > 10 * bound[2] and dropout_effect > 1e-2, (dropout_effect, bound[2])


@pytest.mark.slow  # two 3-round simulations
def test_dropout_on_accuracy_trajectories_agree(data):
    """Dropout on, whole simulation: the two backends' main-task accuracy per round agree
    (different dropout masks, same training): both climb from near chance to ≥ 0.9 on 60
    test images in 3 rounds, and they stay close round by round."""
    acc = {}
    for backend in ("sequential", "vectorized"):
        cfg = config(backend, rounds=3, local_epochs=3, batch_size=4)
        acc[backend] = [m["main_acc"] for m in Simulation(cfg, data).run()]
    s, v = np.array(acc["sequential"]), np.array(acc["vectorized"])
    assert len(s) == len(v) == 3
    assert s[0] < 0.6 and v[0] < 0.6 and s[-1] >= 0.9 and v[-1] >= 0.9, acc
    assert np.abs(s - v).mean() <= 0.15 and np.abs(s[-2:] - v[-2:]).max() <= 0.1, acc


# -- the per-client dropout stream --------------------------------------------------------
def test_hash32_is_the_same_on_numpy_and_torch_and_stays_in_32_bits():
    x = np.array([0, 1, 2, 0xFFFFFFFF, 0x12345678, 2**31], dtype=np.int64)
    h_np = hash32(x)
    h_t = hash32(torch.from_numpy(x)).numpy()
    assert np.array_equal(h_np, h_t)
    assert h_np.min() >= 0 and h_np.max() < 2**32
    assert len(set(h_np.tolist())) == len(x)  # a bijection: no collisions
    # pinned (uint32 arithmetic of Wellons' 16/21f0aaad/15/735a2d97/15 mixer): changing the
    # mixer silently changes every vectorized run's dropout masks
    assert h_np[[0, 1, 2, 4]].tolist() == [0, 2261973619, 229111015, 384267965]


def test_dropout_keys_are_per_client_and_per_step():
    k = dropout_keys([11, 22, 11], epochs=2, steps=3, layers=2)
    assert k.shape == (2, 3, 2, 3, 2) and k.min() >= 0 and k.max() < 2**32
    assert np.array_equal(k[..., 0, :], k[..., 2, :])  # same seed → same stream
    assert np.array_equal(dropout_keys([22], 2, 3, 2)[..., 0, :], k[..., 1, :])  # cohort-independent
    flat = k[..., 0, 0].reshape(-1)
    assert len(set(flat.tolist())) == flat.size  # every (epoch, batch, layer) differs


@pytest.mark.parametrize("p", [0.25, 0.5])
def test_keyed_keep_scale_has_rate_p_and_inverted_scale(p):
    keys = torch.from_numpy(dropout_keys([1, 2, 3, 4], 1, 1, 1)[0, 0, 0])
    s = keyed_keep_scale(keys, (20, 9216), p)
    assert s.shape == (4, 20, 9216)
    values = torch.unique(s).tolist()
    # 1/(1−p) in float32: one rounding of the quotient (1 − p is exact for these p)
    assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(1 / (1 - p), rel=U32, abs=0)
    n = s[0].numel()
    for c in range(4):
        dropped = float((s[c] == 0).float().mean())
        assert abs(dropped - p) < 5 * (p * (1 - p) / n) ** 0.5
    assert not torch.equal(s[0], s[1])
    assert torch.equal(keyed_keep_scale(keys[1:2], (20, 9216), p)[0], s[1])
    # E[scale] = 1, like nn.Dropout; the mean of 4·20·9216 scales of std √(p/(1−p)) ≤ 1
    # has a standard error ≤ 1.2e-3, so 0.01 is > 8 standard errors
    assert float(s.mean()) == pytest.approx(1.0, abs=0.01)
    assert torch.equal(keyed_keep_scale(keys, (3, 5), 0.0), torch.ones(4, 3, 5))


# -- precision ----------------------------------------------------------------------------
def test_precision_on_cpu_is_fp32_or_bf16_where_the_cpu_has_it(data, monkeypatch):
    """tf32 is CUDA-only (refused at validation); bf16 on a CPU is checked where training
    runs (tests/fl_core/test_precision_cpu.py has the rest)."""
    import fl_core.backends as backends

    assert parse_config({}).fl.precision == "fp32"
    with pytest.raises(ConfigError, match="fl.precision"):
        parse_config({"fl": {"device": "cpu", "precision": "tf32"}})
    with pytest.raises(ConfigError, match="CUDA-only"):
        check_precision("tf32", CPU)
    parse_config({"fl": {"device": "cpu", "precision": "bf16"}})
    with pytest.raises(ConfigError, match="fl.precision"):
        parse_config({"fl": {"precision": "fp16"}})
    check_precision("fp32", CPU)
    absent = backends.CpuBf16Support(False, "Test CPU", "x86_64", backends.X86_BF16_FLAGS, (), "test")
    monkeypatch.setattr(backends, "cpu_bf16_support", lambda: absent)
    with pytest.raises(ConfigError, match="fl.precision.*Test CPU"):
        check_precision("bf16", CPU)
    if not torch.cuda.is_available():  # device auto resolves to the CPU: checked when it does
        cfg = parse_config({"fl": {"device": "auto", "precision": "bf16"}, "attack": {"num_tasks": 2}})
        with pytest.raises(ConfigError, match="fl.precision"):
            ClientRunner(cfg, data)


def _tf32_flags():
    b = torch.backends
    if hasattr(b.cuda.matmul, "fp32_precision"):
        return b.cuda.matmul.fp32_precision, b.cudnn.conv.fp32_precision
    return b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32


@pytest.mark.parametrize("precision,tf32", [("fp32", False), ("tf32", True)])
def test_precision_scope_sets_and_restores_the_cuda_tf32_flags(precision, tf32):
    """The CUDA branch only flips global flags, so it is checked without a GPU."""
    before = _tf32_flags()
    with precision_scope(precision, torch.device("cuda")):
        inside = _tf32_flags()
    assert _tf32_flags() == before
    assert all((v in ("tf32", True)) == tf32 for v in inside), inside
    with precision_scope("fp32", CPU):
        assert _tf32_flags() == before  # CPU: nothing touched


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_vectorized_on_cuda_matches_sequential_and_cpu_masks(data, gp, monkeypatch):
    """The CUDA backends agree up to float32 summation order: `reorder_bound` of the CUDA
    sequential run's distance from a float64 run of the same training (on the CPU)."""
    cfg = config("vectorized", device="cuda", client_lr=0.03)
    runner = ClientRunner(cfg, data)
    keys = torch.from_numpy(dropout_keys([5, 6], 1, 1, 1)[0, 0, 0])
    assert torch.equal(keyed_keep_scale(keys.cuda(), (20, 128), 0.5).cpu(), keyed_keep_scale(keys, (20, 128), 0.5))
    no_dropout(runner)
    tasks = tasks_for([3, 0, 4])
    a = SequentialBackend(runner.backend_context).train(tasks, gp, runner.cohort)
    b = VectorizedBackend(runner.backend_context).train(tasks, gp, runner.cohort)
    ref = use_float64(monkeypatch, ClientRunner(config("sequential", client_lr=0.03), data))
    no_dropout(ref)
    a64 = SequentialBackend(ref.backend_context).train(tasks, gp.double(), ref.cohort)
    for x, y, z in zip(a, b, a64):
        assert x.delta.abs().max() > 1e-3  # it trained
        bound = reorder_bound(rel_err(x.delta, z.delta))
        assert rel_err(y.delta, x.delta) <= bound, (x.client_index, rel_err(y.delta, x.delta), bound)


def test_config_checks_fl_backend_against_the_registry_without_torch():
    """`fl.backend` is a registered backend or auto (no Literal repeating the names), with a
    did-you-mean; checking it imports no torch."""
    import subprocess
    import sys

    from fl_core.config import parse_config
    from fl_core.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        parse_config({"fl": {"backend": "vectorised"}})
    assert e.value.path == "fl.backend" and "did you mean `vectorized`" in e.value.allowed
    assert "auto, sequential, vectorized" in e.value.allowed
    probe = ("import sys; from fl_core.config import parse_config; "
             "parse_config({'fl': {'backend': 'vectorized'}}); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
