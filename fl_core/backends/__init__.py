"""Client-training backends: how a round's BENIGN clients are trained (`fl.backend`).

A backend is built once per `ClientRunner` (one per process or Ray actor) from a
`BackendContext` (the model, the SGD hyper-parameters, the device, the chunk setting) and
trains a list of benign tasks from the round's global weights on the round's `Cohort` (its
rows on the device), returning one `ClientResult` per task in task order. It never calls
back into the runner. Attackers never go through a backend: `ClientRunner` hands them to
the attack plug-ins one by one (STYLE §3.2: attacks compose `training.local_train`).

- `sequential`: one client after another, one model reused in place; exactly the engine's
  reference loop (`training.benign_update`), so its results are bit-identical to it.
- `vectorized`: all clients of the list train in lock-step as one batched computation
  (`torch.func.functional_call` + `vmap` over stacked per-client weights); equal to
  `sequential` within float tolerance when dropout is off, and statistically equal with
  dropout on (its dropout masks come from a per-client counter-based stream, see
  `vectorized.keyed_keep_scale`, not from torch's global RNG).

Large cohorts: the runner trains a round's benign tasks in chunks (`chunk_size`): one
client for `sequential`, `fl.vectorized_chunk` clients for `vectorized` (auto: sized from
the device's free memory), and passes each chunk's updates on before the next, so a round
of 1,000 clients never holds 1,000 of them on the device or the host.

`auto` picks `vectorized` on CUDA and `sequential` on CPU: on a CPU the per-client loop is
already at the bare-SGD floor and batching clients only adds memory traffic (measured in
`BENCHMARKS.md`).

`fl.precision` (`fp32`, `tf32`, `bf16`) is applied by `precision_scope` around a round's
client training. CUDA: all three. CPU: `fp32`, and `bf16` where the CPU has native bf16
arithmetic (`cpu_bf16_support`); `tf32` is CUDA-only. Whether a precision can run is
checked by `check_precision` on the machine that trains, when its `ClientRunner` is built
(the in-process executor, or every Ray actor), not at config validation: `fl.device: auto`
resolves there, and a sweep validates its grid on a driver that may not be the machine
(or the CPU model) its trials train on.
"""

from __future__ import annotations

import contextlib
import functools
import platform
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Iterator

from fl_core.backends.base import BACKENDS, BackendContext, BackendSpec, ClientBackend, require_benign
from fl_core.errors import ConfigError, UnknownComponentError

if TYPE_CHECKING:  # torch is imported where a backend runs: `fl.backend` is checked without it
    import torch


def _sequential(ctx: BackendContext) -> ClientBackend:
    from fl_core.backends.sequential import SequentialBackend  # torch: built on use

    return SequentialBackend(ctx)


def _vectorized(ctx: BackendContext) -> ClientBackend:
    from fl_core.backends.vectorized import VectorizedBackend

    return VectorizedBackend(ctx)


BACKENDS.register(BackendSpec("sequential", _sequential))
BACKENDS.register(BackendSpec("vectorized", _vectorized))

#: `fl.backend` may also say `auto`: the fastest registered backend for the device.
AUTO = "auto"

#: what `auto` resolves to, by device type (anything not listed: sequential).
AUTO_BY_DEVICE: MappingProxyType[str, str] = MappingProxyType({"cuda": "vectorized", "cpu": "sequential"})

PRECISIONS = ("fp32", "tf32", "bf16")


def resolve_backend_name(name: str, device: torch.device) -> str:
    """`auto` → the fastest backend for `device`; any other name is returned unchanged."""
    if name == "auto":
        return AUTO_BY_DEVICE.get(device.type, "sequential")
    return name


def make_backend(name: str, ctx: BackendContext) -> ClientBackend:
    """Build backend `name` (or `auto`, by `ctx.device`); unknown names raise
    `UnknownComponentError` listing the valid ones."""
    resolved = resolve_backend_name(name, ctx.device)
    spec = BACKENDS.get(resolved)
    if spec is None:
        raise UnknownComponentError("backend", name, [*BACKENDS, "auto"])
    return spec.build(ctx)


#: x86-64 CPU flags (Linux `/proc/cpuinfo` names) of native bf16 arithmetic: AVX512-BF16
#: (bf16 dot products into fp32: Cooper Lake, Sapphire Rapids and later Xeons, AMD Zen 4+)
#: and AMX-BF16 (bf16 tile matmuls: Sapphire Rapids and later). Either lets oneDNN run
#: autocast's bf16 convolutions and matmuls natively.
X86_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
#: aarch64 (`Features` in /proc/cpuinfo): the Armv8.6 BF16 extension (BFDOT/BFMMLA;
#: Graviton 3, Neoverse V1/V2). Accepted on the flag alone: not measured by this project.
ARM_BF16_FLAGS = ("bf16",)


@dataclass(frozen=True)
class CpuBf16Support:
    """What `cpu_bf16_support` found: whether bf16 autocast may run on this CPU, its model
    name, its architecture, which of the required flags it has, and where they were read."""

    supported: bool
    model: str
    arch: str
    required: tuple[str, ...]
    present: tuple[str, ...]
    source: str

    def reason(self) -> str:
        if self.supported:
            return f"{self.model} has {', '.join(self.present)}"
        if not self.required:
            return f"bf16 on a CPU is supported on x86-64 and aarch64 only; this CPU is {self.model} ({self.arch})"
        return (f"this CPU ({self.model}, {self.arch}) lacks native bf16 arithmetic: none of "
                f"{' / '.join(self.required)} in {self.source}")


def _cpuinfo() -> tuple[str, set[str], str]:
    """(model name, flags, source) from /proc/cpuinfo (Linux), else from torch's cpuinfo
    (`torch.cpu.get_capabilities`, torch ≥ 2.9), else (platform name, no flags)."""
    model, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, val = line.partition(":")
            key = key.strip()
            if key in ("model name", "Model name", "CPU part") and not model:
                model = val.strip()
            elif key in ("flags", "Features") and not flags:
                flags = set(val.split())
        if flags:
            return model or platform.processor() or "unknown CPU", flags, "/proc/cpuinfo"
    except OSError:
        pass
    try:
        import torch

        caps = torch.cpu.get_capabilities()  # type: ignore[attr-defined]
        flags = {k for k, v in caps.items() if v is True}
        return str(caps.get("cpu_name") or platform.processor() or "unknown CPU"), flags, "torch.cpu.get_capabilities()"
    except Exception:  # older torch: no capability report
        return platform.processor() or "unknown CPU", set(), "no CPU flag source"


@functools.lru_cache(maxsize=1)
def cpu_bf16_support() -> CpuBf16Support:
    """Can `fl.precision: bf16` run on this process's CPU? Yes where the CPU has native bf16
    arithmetic (`X86_BF16_FLAGS` / `ARM_BF16_FLAGS`) and torch has oneDNN (mkldnn).

    Why native only: without it oneDNN emulates bf16 with fp32 arithmetic plus conversions
    (AVX-512 without BF16) or falls back to reference code (AVX2), so bf16 would be slower
    than fp32 while still rounding like bf16. One SGD step of the paper CNN with oneDNN
    capped by ONEDNN_MAX_CPU_ISA on an AMX machine (BENCHMARKS.md): fp32 ~26 ms; bf16
    channels-last 9.5 ms with AMX, 24 ms with AVX512-BF16 alone (a small gain: the big one
    is AMX's), 54 ms emulated on AVX-512, 220 ms on AVX2. Read once per process (cached)."""
    import torch

    model, flags, source = _cpuinfo()
    arch = platform.machine().lower()
    required = X86_BF16_FLAGS if arch in ("x86_64", "amd64") else ARM_BF16_FLAGS if arch in ("aarch64", "arm64") else ()
    present = tuple(f for f in required if f in flags)
    ok = bool(present) and torch.backends.mkldnn.is_available()
    if present and not ok:
        source += "; torch built without oneDNN (torch.backends.mkldnn.is_available() is False)"
    return CpuBf16Support(ok, model, arch, required, present, source)


def check_precision(precision: str, device: torch.device) -> None:
    """Raise ConfigError unless `precision` can run on `device` on THIS machine: CUDA runs
    all of `PRECISIONS`; a CPU fp32, and bf16 where `cpu_bf16_support()` says so.

    Called where training happens (`ClientRunner`, in the process that trains: the driver
    for in-process runs, each Ray actor in a sweep), so a sweep whose driver lacks bf16 but
    whose workers have it runs, and one whose workers lack it fails at the trial's start
    with this message, before any round."""
    if precision not in PRECISIONS:
        raise ConfigError("fl.precision", precision, " | ".join(PRECISIONS))
    if precision == "fp32" or device.type == "cuda":
        return
    if precision == "bf16" and device.type == "cpu":
        cap = cpu_bf16_support()
        if not cap.supported:
            raise ConfigError(
                "fl.precision", precision,
                f"fp32 on this machine: {cap.reason()}; bf16 on a CPU needs "
                f"{' or '.join(cap.required) or 'an x86-64 or aarch64 CPU with native bf16'} "
                "(set fl.precision: fp32, or train on such a CPU or on CUDA)",
            )
        return
    raise ConfigError(
        "fl.precision", precision,
        f"fp32{' or bf16' if device.type == 'cpu' else ''} on device {device.type} "
        "(tf32 is CUDA-only; set fl.device: cuda or another fl.precision)",
    )


def _fp32_flags() -> list[tuple[object, str]]:
    """(object, attribute) pairs that choose between IEEE fp32 and TF32 on CUDA. torch ≥ 2.9
    has `fp32_precision` ("ieee" | "tf32"); older versions the `allow_tf32` booleans.
    Note: cuDNN convolutions default to TF32 in torch, so `fp32` must switch them off."""
    import torch

    b = torch.backends
    if hasattr(b.cuda.matmul, "fp32_precision") and hasattr(getattr(b.cudnn, "conv", None), "fp32_precision"):
        return [(b.cuda.matmul, "fp32_precision"), (b.cudnn.conv, "fp32_precision")]
    return [(b.cuda.matmul, "allow_tf32"), (b.cudnn, "allow_tf32")]


@contextlib.contextmanager
def precision_scope(precision: str, device: torch.device) -> Iterator[None]:
    """Run client training at `precision` on `device`; restores the global flags after.

    fp32: IEEE float32 everywhere (CUDA: TF32 off for matmuls AND cuDNN convolutions).
    tf32 (CUDA): float32 storage, TF32 tensor-core matmuls and convolutions.
    bf16: `torch.autocast(device, bfloat16)` around the training: convolutions and matmuls
    run in bf16, what autocast keeps in fp32 (the loss, softmax) stays there, and the
    weights, their gradients and the SGD update stay float32 (fp32 master weights); the
    server's aggregation never runs inside this scope. CUDA: TF32 off for what autocast
    leaves in float32. CPU: also channels-last weights (`training.memory_format_scope`):
    oneDNN's bf16 convolutions are faster in NHWC (measured in BENCHMARKS.md; the fp32
    path keeps its layout, so no fp32 result changes).

    The autocast weight cache is OFF: one scope spans many SGD steps that update the
    weights in place, and the cache (keyed by tensor, not by version) would keep feeding
    every forward the bf16 copy made at the first step.
    """
    check_precision(precision, device)
    if device.type != "cuda":
        if precision == "bf16":
            import torch

            from fl_core.training import memory_format_scope

            with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False), \
                    memory_format_scope(torch.channels_last):
                yield
        else:
            yield
        return
    flags = _fp32_flags()
    old = [getattr(obj, attr) for obj, attr in flags]
    tf32 = precision == "tf32"
    for obj, attr in flags:
        setattr(obj, attr, ("tf32" if tf32 else "ieee") if attr == "fp32_precision" else tf32)
    try:
        if precision == "bf16":
            import torch

            with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
                yield
        else:
            yield
    finally:
        for (obj, attr), value in zip(flags, old):
            setattr(obj, attr, value)


__all__ = [
    "AUTO_BY_DEVICE",
    "BackendContext",
    "BackendSpec",
    "BACKENDS",
    "PRECISIONS",
    "ClientBackend",
    "CpuBf16Support",
    "check_precision",
    "cpu_bf16_support",
    "make_backend",
    "precision_scope",
    "require_benign",
    "resolve_backend_name",
]
