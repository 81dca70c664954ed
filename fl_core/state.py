"""The complete, serialisable state of a simulation between rounds.

Everything random is derived statelessly from (seed, stream, round, client), so the state
is just the next round, the global weights and the (empty for plain SGD) server optimizer
and attack memory; resuming from it is bit-identical to not stopping. Saved as a JSON
header plus tensors with `torch.save`, loaded with `weights_only=True` (no arbitrary
pickles), written to a temp file in the same directory then `os.replace`d, so a crash
mid-write never leaves a truncated checkpoint.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from fl_core.config import SimulationConfig, result_hash
from fl_core.errors import CheckpointMismatchError, DatasetError

SCHEMA_VERSION = 1


def runtime_env(device: torch.device | str = "cpu") -> dict:
    """Library versions and device: bit-exactness is promised only when these match."""
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
    """

    round_idx: int
    global_params: torch.Tensor
    config_hash: str
    schema_version: int = SCHEMA_VERSION
    server_opt_state: dict = field(default_factory=dict)
    attack_state: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)

    def replace(self, **changes) -> "SimulationState":
        return replace(self, **changes)


def _umask() -> int:
    """The process umask, read without changing it: `os.umask` can only be read by setting
    it, and setting it to 0 even briefly makes files other threads create meanwhile
    world-writable. Linux reports it in /proc/self/status; elsewhere the value read once
    at import (single-threaded) is used."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return _UMASK_AT_IMPORT


def _read_umask_once() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK_AT_IMPORT = _read_umask_once()


def atomic_write_bytes(path: Path, write) -> None:
    """Call `write(fileobj)` on a temp file next to `path`, fsync, then rename over it.
    The file gets the usual umask permissions (mkstemp's 0600 would hide checkpoints and
    manifests from the other users of a shared cluster mount)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_state(path: str | os.PathLike, state: SimulationState) -> None:
    header = {
        "schema_version": state.schema_version,
        "round_idx": state.round_idx,
        "config_hash": state.config_hash,
        "server_opt_state": state.server_opt_state,
        "attack_state": state.attack_state,
        "env": state.env,
    }
    payload = {"header": json.dumps(header, sort_keys=True), "global_params": state.global_params.cpu()}
    atomic_write_bytes(Path(path), lambda f: torch.save(payload, f))


def load_state(path: str | os.PathLike, config: SimulationConfig | None = None) -> SimulationState:
    """Load a checkpoint; with `config`, refuse one written under a different config."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(str(path), "no checkpoint file", "start a fresh run without --resume")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    header = json.loads(payload["header"])
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
        global_params=payload["global_params"],
        config_hash=header["config_hash"],
        schema_version=header["schema_version"],
        server_opt_state=header["server_opt_state"],
        attack_state=header["attack_state"],
        env=header["env"],
    )
