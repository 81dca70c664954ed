"""The complete, serialisable state of a simulation between rounds.

Everything random is derived statelessly from (seed, stream, round, client), so the state
is just the next round, the global weights and the (empty for plain SGD) server optimizer
and attack memory; resuming from it is bit-identical to not stopping. Saved as a JSON
header plus tensors with `torch.save`, loaded with `weights_only=True` (no arbitrary
pickles), written to a temp file in the same directory then `os.replace`d (and the
directory fsynced), so a crash mid-write never leaves a truncated checkpoint; a checkpoint
truncated or damaged some other way is refused with `CheckpointError` naming the file.
torch is imported where it is used, so that the sweeper's CLI can use the atomic writes
without paying for torch.
"""

from __future__ import annotations

import errno
import json
import os
import platform
import secrets
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from fl_core.errors import CheckpointError, CheckpointMismatchError, DatasetError

if TYPE_CHECKING:
    import torch

    from fl_core.config import SimulationConfig

SCHEMA_VERSION = 1


def runtime_env(device: "torch.device | str" = "cpu") -> dict:
    """Library versions and device: bit-exactness is promised only when these match."""
    import torch

    dev = torch.device(device)
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": dev.type,
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.machine(),
    }


@dataclass(frozen=True)
class SimulationState:
    """Attributes:
    round_idx: the next round to run (= rounds completed).
    global_params: flat float32 CPU weights w_t.
    config_hash: `result_hash` of the config that produced this state.
    aggregator_state: what the aggregator keeps between rounds (FoolsGold's per-writer
        histories), CPU tensors by name; {} for the stateless ones. Saved as tensors.
    """

    round_idx: int
    global_params: torch.Tensor
    config_hash: str
    schema_version: int = SCHEMA_VERSION
    server_opt_state: dict = field(default_factory=dict)
    attack_state: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)
    aggregator_state: dict = field(default_factory=dict)

    def replace(self, **changes) -> "SimulationState":
        return replace(self, **changes)


def _create_temp(path: Path) -> tuple[int, Path]:
    """A new, exclusive temp file next to `path`, created with mode 0666 so that the kernel
    applies the process umask (mkstemp's 0600 would hide checkpoints and manifests from the
    other users of a shared cluster mount; reading the umask means setting it, a race with
    other threads)."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temp name next to {path}")


def fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable (after a power loss the old name could come
    back otherwise). File systems that cannot fsync a directory are left as they are."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)



def atomic_write_bytes(path: Path, write) -> None:
    """Call `write(fileobj)` on a temp file next to `path`, fsync it, rename it over `path`
    and fsync the directory. The file gets the usual umask permissions."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def save_state(path: str | os.PathLike, state: SimulationState) -> None:
    header = {
        "schema_version": state.schema_version,
        "round_idx": state.round_idx,
        "config_hash": state.config_hash,
        "server_opt_state": state.server_opt_state,
        "attack_state": state.attack_state,
        "env": state.env,
    }
    payload = {
        "header": json.dumps(header, sort_keys=True),
        "global_params": state.global_params.cpu(),
        "aggregator_state": {k: v.cpu() for k, v in state.aggregator_state.items()},
    }
    import torch

    atomic_write_bytes(Path(path), lambda f: torch.save(payload, f))


def _read_checkpoint(path: Path) -> tuple[dict, "torch.Tensor", dict]:
    """(header, global_params, aggregator_state) of a checkpoint file, or CheckpointError
    naming it: an empty, truncated or overwritten file fails in torch's zip reader or
    unpickler, a foreign one lacks the keys or the tensor. Checkpoints written before
    aggregators kept state have no aggregator_state: {}."""
    import torch

    if path.stat().st_size == 0:
        raise CheckpointError(str(path), "the file is empty (a crash before its first write?)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        header = json.loads(payload["header"])
        params = payload["global_params"]
        agg_state = payload.get("aggregator_state", {})
        if not isinstance(header, dict) or not isinstance(params, torch.Tensor):
            raise TypeError("header or global_params of the wrong type")
        if not isinstance(agg_state, dict) or not all(isinstance(v, torch.Tensor) for v in agg_state.values()):
            raise TypeError("aggregator_state is not a mapping of tensors")
        for key in ("schema_version", "round_idx", "config_hash"):
            header[key]
    except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError, ...
        reason = f"{type(e).__name__}: {e}".splitlines()[0][:300]
        raise CheckpointError(str(path), f"unreadable or truncated ({reason})") from None
    return header, params, agg_state


def load_state(path: str | os.PathLike, config: SimulationConfig | None = None) -> SimulationState:
    """Load a checkpoint; with `config`, refuse one written under a different config."""
    from fl_core.config import result_hash

    path = Path(path)
    if not path.exists():
        raise DatasetError(str(path), "no checkpoint file", "start a fresh run without --resume")
    header, params, agg_state = _read_checkpoint(path)
    if header["schema_version"] != SCHEMA_VERSION:
        raise CheckpointMismatchError(
            f"schema v{SCHEMA_VERSION}", f"{path} (schema v{header['schema_version']})",
            "resume it with the version that wrote it, or start a new run",
        )
    if config is not None and header["config_hash"] != result_hash(config):
        raise CheckpointMismatchError(
            f"config hash {result_hash(config)[:12]}…",
            f"{path} (config hash {header['config_hash'][:12]}…)",
            "only fl.rounds, fl.workers, fl.eval_every and fl.checkpoint_every may change on resume; "
            "use a new output directory for a different config",
        )
    return SimulationState(
        round_idx=header["round_idx"],
        global_params=params,
        config_hash=header["config_hash"],
        schema_version=header["schema_version"],
        server_opt_state=header.get("server_opt_state", {}),
        attack_state=header.get("attack_state", {}),
        env=header.get("env", {}),
        aggregator_state=agg_state,
    )
