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
client training on CUDA; a CPU run accepts only `fp32` (`check_precision`).
"""

from __future__ import annotations

import contextlib
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


def check_precision(precision: str, device: torch.device) -> None:
    """Raise ConfigError unless `precision` can run on `device` (CPU: fp32 only)."""
    if precision not in PRECISIONS:
        raise ConfigError("fl.precision", precision, " | ".join(PRECISIONS))
    if precision != "fp32" and device.type != "cuda":
        raise ConfigError(
            "fl.precision", precision,
            f"fp32 on device {device.type} (tf32 and bf16 are CUDA-only; set fl.device: cuda or fl.precision: fp32)",
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

    fp32: IEEE float32 everywhere (TF32 off for matmuls AND cuDNN convolutions).
    tf32: float32 storage, TF32 tensor-core matmuls and convolutions.
    bf16: `torch.autocast("cuda", bfloat16)` around the forward passes (weights, gradients
    and the SGD update stay float32); TF32 off for what autocast leaves in float32.
    On CPU this is a no-op for fp32 (other precisions are rejected by `check_precision`).
    """
    check_precision(precision, device)
    if device.type != "cuda":
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

            with torch.autocast("cuda", dtype=torch.bfloat16):
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
    "check_precision",
    "make_backend",
    "precision_scope",
    "require_benign",
    "resolve_backend_name",
]
