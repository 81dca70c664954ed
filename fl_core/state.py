"""The complete, serialisable state of a simulation between rounds.

Everything random is derived statelessly from (seed, stream, round, client), so the state
is just the next round, the global weights and the (empty for plain SGD) server optimizer
and attack memory; resuming from it is bit-identical to not stopping. Saved as a JSON
header plus tensors with `torch.save`, loaded with `weights_only=True` (no arbitrary
pickles), written to a temp file in the same directory then `os.replace`d (and the
directory fsynced), so a crash mid-write never leaves a truncated checkpoint; a checkpoint
truncated or damaged some other way is refused with `CheckpointError` naming the file.
A checkpoint is read back as hostile input: its header is checked against a strict schema
and its weights against the model (size, float32, finite), so a forged or damaged file is
one `CheckpointError` naming the file and the field, never a crash rounds later.
torch and pydantic are imported where it is used, so that the sweeper's CLI can use the atomic writes
without paying for torch.
"""

from __future__ import annotations

import errno
import functools
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
    attack_state: what the attack keeps between rounds (a learned trigger: A3FL's patch,
        IBA's generator), CPU tensors by name; {} for the others, and in checkpoints written
        before attacks kept state. Saved as tensors, like aggregator_state.
    defense_state: what the defenses keep between rounds (adaptive clipping's bound
        `clip_bound`), CPU tensors by name; {} when none does, and in checkpoints written
        before this field existed. Saved as tensors, like aggregator_state.
    metrics: the metric rows (dicts with an int `round`) this checkpoint vouches for: the
        evaluated rounds since the previous checkpoint, and at least the last evaluated
        one (`fl_core.loop` fills it). A crash can cut the last line of a run's metrics
        file while the checkpoint already covers that round; a resume restores the row
        from here (`fl_core.loop.resume_history`), so no step is lost. () in checkpoints
        written before this field existed.
    """

    round_idx: int
    global_params: torch.Tensor
    config_hash: str
    schema_version: int = SCHEMA_VERSION
    server_opt_state: dict = field(default_factory=dict)
    attack_state: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)
    aggregator_state: dict = field(default_factory=dict)
    metrics: tuple = ()
    defense_state: dict = field(default_factory=dict)

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


class _KeepsWriteError:
    """The file a `write` callback gets: it remembers the first OSError of a write, so
    that a serializer that turns one into another exception cannot hide what went wrong
    (torch.save reports a full disk as `RuntimeError: ... unexpected pos`, without the
    ENOSPC that tells the user to free space)."""

    def __init__(self, f):
        self._f, self.error = f, None

    def write(self, data):
        try:
            return self._f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def __getattr__(self, name):
        return getattr(self._f, name)


def atomic_write_bytes(path: Path, write) -> None:
    """Call `write(fileobj)` on a temp file next to `path`, fsync it, rename it over `path`
    and fsync the directory. The file gets the usual umask permissions. A failed write
    (disk full, quota, I/O error) raises its OSError, whatever `write` turned it into, and
    leaves `path` as it was and no temp file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    f = _KeepsWriteError(os.fdopen(fd, "wb"))
    try:
        try:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        finally:
            try:
                f.close()  # flushes what a failed write left buffered: it may fail again
            except OSError:
                if f.error is None:
                    raise
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if f.error is not None and f.error is not e:
            raise f.error from None
        raise
    fsync_dir(path.parent)


def save_state(path: str | os.PathLike, state: SimulationState) -> None:
    header = {
        "schema_version": state.schema_version,
        "round_idx": state.round_idx,
        "config_hash": state.config_hash,
        "server_opt_state": state.server_opt_state,
        "env": state.env,
    }
    payload = {
        "header": json.dumps(header, sort_keys=True),
        "global_params": state.global_params.cpu(),
        "aggregator_state": {k: v.cpu() for k, v in state.aggregator_state.items()},
        "defense_state": {k: v.cpu() for k, v in state.defense_state.items()},
        "attack_state": {k: v.cpu() for k, v in state.attack_state.items()},
        # a JSON string, not in the (key-sorted) header: the rows keep their key order, so
        # a row restored from here is the very line the run wrote
        "metrics": json.dumps(list(state.metrics)),
    }
    import torch

    atomic_write_bytes(Path(path), lambda f: torch.save(payload, f))


#: Bounds on the JSON parts of a checkpoint read back (a header is a few hundred bytes;
#: the metric rows about 1 kB per evaluated round since the previous checkpoint).
MAX_HEADER_CHARS = 1 << 20
MAX_METRICS_CHARS = 64 << 20


@functools.lru_cache(maxsize=None)
def _schemas():
    """(header model, metric rows adapter): pydantic is imported on first use, so that the
    sweeper's CLI, which uses the atomic writes above, does not pay for it at startup."""
    from typing import Annotated

    from pydantic import BaseModel, ConfigDict, Field, JsonValue, TypeAdapter

    class Header(BaseModel):
        """The JSON header `save_state` writes; strict: "1", 1.0, true or null is no round."""

        model_config = ConfigDict(strict=True, extra="forbid", frozen=True)
        schema_version: int
        round_idx: Annotated[int, Field(ge=0)]
        config_hash: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
        server_opt_state: dict[str, JsonValue] = {}
        # checkpoints written before attacks kept tensor state carried an (always empty)
        # JSON attack_state here; the state itself is a tensor map of the payload now
        attack_state: Annotated[dict[str, JsonValue], Field(max_length=0)] = {}
        env: dict[str, str] = {}

    row = Annotated[dict[str, JsonValue], Field(max_length=10_000)]
    return Header, TypeAdapter(list[row], config=ConfigDict(strict=True))


def _field_error(e) -> str:
    """The first pydantic error as `field`: what is wrong (found …), for one line."""
    err = e.errors()[0]
    loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
    found = repr(err.get("input"))
    found = found if len(found) <= 60 else found[:57] + "..."
    return f"`{loc}`: {err['msg']} (found {found})"


def _check_tensor(path: Path, name: str, t, require_float32: bool) -> None:
    """A dense CPU tensor with finite values (float32 for the weights)."""
    import torch

    if not isinstance(t, torch.Tensor) or t.layout != torch.strided:
        raise CheckpointError(str(path), f"`{name}` is not a dense tensor (found {type(t).__name__})")
    if require_float32 and (t.dtype != torch.float32 or t.dim() != 1 or t.numel() == 0):
        raise CheckpointError(str(path), f"`{name}` must be a non-empty flat float32 vector "
                              f"(found {t.dtype}, shape {tuple(t.shape)})")
    if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all()):
        raise CheckpointError(str(path), f"`{name}` holds NaN or infinite values (a damaged or "
                              "forged file: a run that diverges writes no checkpoint)")


def _read_checkpoint(path: Path) -> tuple[dict, "torch.Tensor", dict, tuple, dict, dict]:
    """(header, global_params, aggregator_state, metrics, defense_state, attack_state) of a checkpoint
    file, checked as hostile input, or CheckpointError naming the file and the field: an
    empty, truncated or overwritten file fails in torch's zip reader or unpickler, a foreign
    or forged one in the schema. Checkpoints written before aggregators kept state have no
    aggregator_state ({}), those written before the metric rows no metrics (()), those
    written before defenses (attacks) kept state no defense_state (attack_state): {}."""
    import torch
    from pydantic import ValidationError

    if path.stat().st_size == 0:
        raise CheckpointError(str(path), "the file is empty (a crash before its first write?)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError, ...
        reason = f"{type(e).__name__}: {e}".splitlines()[0][:300]
        raise CheckpointError(str(path), f"unreadable or truncated ({reason})") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("header"), str):
        raise CheckpointError(str(path), "not a checkpoint (no JSON `header`)")
    raw_header = payload["header"]
    if len(raw_header) > MAX_HEADER_CHARS:
        raise CheckpointError(str(path), f"`header` is {len(raw_header)} characters (at most "
                              f"{MAX_HEADER_CHARS}: a forged file?)")
    try:
        header = json.loads(raw_header)
    except (ValueError, RecursionError) as e:
        raise CheckpointError(str(path), f"`header` is not JSON ({type(e).__name__})") from None
    if not isinstance(header, dict):
        raise CheckpointError(str(path), f"`header` is not a JSON object (found {type(header).__name__})")
    version = header.get("schema_version")
    if type(version) is int and version != SCHEMA_VERSION:
        raise CheckpointMismatchError(
            f"schema v{SCHEMA_VERSION}", f"{path} (schema v{version})",
            "resume it with the version that wrote it, or start a new run",
        )
    header_model, rows_adapter = _schemas()
    try:
        header = header_model.model_validate(header).model_dump()
    except ValidationError as e:
        raise CheckpointError(str(path), f"header field {_field_error(e)}") from None

    params = payload.get("global_params")
    _check_tensor(path, "global_params", params, require_float32=True)
    agg_state = _read_tensor_map(path, payload, "aggregator_state")
    metrics = _read_metrics(path, payload.get("metrics", "[]"), header["round_idx"], rows_adapter)
    return (header, params, agg_state, metrics, _read_tensor_map(path, payload, "defense_state"),
            _read_tensor_map(path, payload, "attack_state"))


def _read_tensor_map(path: Path, payload: dict, name: str) -> dict:
    """The payload's `name` entry: a mapping of names to finite dense tensors ({} if absent)."""
    entries = payload.get(name, {})
    if not isinstance(entries, dict) or not all(isinstance(k, str) for k in entries):
        raise CheckpointError(str(path), f"`{name}` is not a mapping of names to tensors")
    for k, v in entries.items():
        _check_tensor(path, f"{name}.{k}", v, require_float32=False)
    return entries


def _read_metrics(path: Path, raw, round_idx: int, adapter) -> tuple:
    """The checkpoint's metric rows: JSON objects, each with an int `round` in
    1..round_idx, strictly ascending. Parsed with `json` (not pydantic) so that the
    values, and the key order, are exactly those the run wrote."""
    from pydantic import ValidationError

    if not isinstance(raw, str) or len(raw) > MAX_METRICS_CHARS:
        what = f"{len(raw)} characters" if isinstance(raw, str) else type(raw).__name__
        raise CheckpointError(str(path), f"`metrics` must be a JSON string of at most "
                              f"{MAX_METRICS_CHARS} characters (found {what})")
    try:
        rows = json.loads(raw)
        adapter.validate_python(rows)
    except (ValueError, RecursionError) as e:  # ValidationError is a ValueError
        why = _field_error(e) if isinstance(e, ValidationError) else type(e).__name__
        raise CheckpointError(str(path), f"`metrics` rows are not a list of JSON objects ({why})") from None
    last = 0
    for i, row in enumerate(rows):
        r = row.get("round")
        if type(r) is not int or not last < r <= round_idx:
            raise CheckpointError(
                str(path), f"`metrics.{i}.round` must be an integer above {last} and at most the "
                f"checkpoint's round {round_idx} (found {r!r:.60})")
        last = r
    return tuple(rows)


def model_size(config: SimulationConfig | None = None) -> int:
    """Number of weights of the model a config trains (the paper's CNN; every config
    trains it), counted on the meta device: no init drawn, no memory."""
    import torch

    from fl_core.models import CNN

    with torch.device("meta"):
        return sum(p.numel() for p in CNN().parameters())


def load_state(path: str | os.PathLike, config: SimulationConfig | None = None) -> SimulationState:
    """Load a checkpoint; with `config`, refuse one written under a different config or
    whose weights do not fit the config's model.

    Raises:
        DatasetError: no such file.
        CheckpointError: the file is damaged, forged or not a checkpoint (names the field).
        CheckpointMismatchError: another schema version, or another config.
    """
    from fl_core.config import result_hash

    path = Path(path)
    if not path.exists():
        raise DatasetError(str(path), "no checkpoint file", "start a fresh run without --resume")
    header, params, agg_state, metrics, defense_state, attack_state = _read_checkpoint(path)
    if config is not None and header["config_hash"] != result_hash(config):
        raise CheckpointMismatchError(
            f"config hash {result_hash(config)[:12]}…",
            f"{path} (config hash {header['config_hash'][:12]}…)",
            "only fl.rounds, fl.workers, fl.eval_every and fl.checkpoint_every may change on resume; "
            "use a new output directory for a different config",
        )
    if config is not None and params.numel() != (size := model_size(config)):
        raise CheckpointError(str(path), f"`global_params` has {params.numel()} values; the "
                              f"config's model has {size}")
    return SimulationState(
        round_idx=header["round_idx"],
        global_params=params,
        config_hash=header["config_hash"],
        schema_version=header["schema_version"],
        server_opt_state=header["server_opt_state"],
        attack_state=attack_state,
        env=header["env"],
        aggregator_state=agg_state,
        metrics=metrics,
        defense_state=defense_state,
    )
