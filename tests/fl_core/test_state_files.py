"""Checkpoint files on disk: atomic writes (umask permissions, fsynced directory, no temp
left behind), damaged checkpoints refused with the file named (issue 10, item 6), and
forged ones (a header field of the wrong type, weights of the wrong size, dtype or with
NaN) refused with the file and the field named (issue 19)."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch

from fl_core.config import parse_config, result_hash
from fl_core.errors import CheckpointError, CheckpointMismatchError, FLCoreError
from fl_core.models import NUM_PARAMS
from fl_core.state import SimulationState, atomic_write_bytes, load_state, save_state

WEIGHTS = torch.linspace(-1, 1, NUM_PARAMS)
ROWS = ({"round": 2, "main_acc": 0.5, "flag_tpr": None}, {"round": 3, "main_acc": 0.25, "z": 1})


@pytest.fixture
def saved(tmp_path):
    cfg = parse_config({})
    path = tmp_path / "state.pt"
    save_state(path, SimulationState(3, WEIGHTS, result_hash(cfg), metrics=ROWS))
    return path, cfg


def test_checkpoint_round_trips(saved):
    path, cfg = saved
    st = load_state(path, cfg)
    assert st.round_idx == 3 and torch.equal(st.global_params, WEIGHTS)
    assert st.metrics == ROWS and [list(r) for r in st.metrics] == [list(r) for r in ROWS]  # key order too


def _payload(path):
    return torch.load(path, weights_only=True)


def _forge(path, fields=None, drop=(), **entries):
    """Rewrite the checkpoint at `path` with header fields and payload entries changed."""
    p = _payload(path)
    h = json.loads(p["header"])
    h.update(fields or {})
    p["header"] = json.dumps(h)
    p.update(entries)
    for k in drop:
        p.pop(k, None)
    torch.save(p, path)


@pytest.mark.parametrize("header,field", [
    ({"round_idx": "1"}, "round_idx"), ({"round_idx": None}, "round_idx"),
    ({"round_idx": -5}, "round_idx"), ({"round_idx": 2.0}, "round_idx"), ({"round_idx": True}, "round_idx"),
    ({"schema_version": "1"}, "schema_version"), ({"config_hash": 7}, "config_hash"),
    ({"config_hash": "../../x"}, "config_hash"), ({"env": {"torch": 2}}, "env.torch"),
    ({"server_opt_state": []}, "server_opt_state"), ({"attack_state": "x"}, "attack_state"),
    ({"surprise": 1}, "surprise"),
])
def test_forged_header_field_is_a_checkpoint_error_naming_file_and_field(saved, header, field):
    path, cfg = saved
    _forge(path, header)
    for c in (cfg, None):  # with a config (resume) and without (a warm start)
        with pytest.raises(CheckpointError) as e:
            load_state(path, c)
        msg = str(e.value)
        assert str(path) in msg and f"`{field}`" in msg and "\n" not in msg, msg


@pytest.mark.parametrize("weights,needle", [
    (torch.zeros(1000), "has 1000 values"),
    (torch.zeros(NUM_PARAMS, dtype=torch.float64), "float32"),
    (torch.zeros(NUM_PARAMS, dtype=torch.int32), "float32"),
    (torch.zeros(2, NUM_PARAMS // 2), "float32"),
    (torch.zeros(0), "float32"),
    (torch.full((NUM_PARAMS,), float("nan")), "NaN"),
    (torch.zeros(NUM_PARAMS).index_fill_(0, torch.tensor([7]), float("inf")), "NaN or infinite"),
    ("weights", "dense tensor"),
    (None, "dense tensor"),
])
def test_forged_weights_are_a_checkpoint_error(saved, weights, needle):
    path, cfg = saved
    _forge(path, global_params=weights)
    with pytest.raises(CheckpointError) as e:
        load_state(path, cfg)
    assert str(path) in str(e.value) and "`global_params`" in str(e.value) and needle in str(e.value)


@pytest.mark.parametrize("entries,field", [
    ({"aggregator_state": {"history": torch.tensor([1.0, float("nan")])}}, "aggregator_state.history"),
    ({"aggregator_state": {"history": [1.0]}}, "aggregator_state.history"),
    ({"aggregator_state": [torch.zeros(1)]}, "aggregator_state"),
    ({"metrics": json.dumps([{"round": "2"}])}, "metrics.0.round"),
    ({"metrics": json.dumps([{"round": 4}])}, "metrics.0.round"),  # past the checkpoint's round 3
    ({"metrics": json.dumps([{"round": 3}, {"round": 2}])}, "metrics.1.round"),
    ({"metrics": json.dumps([{"main_acc": 1}])}, "metrics.0.round"),
    ({"metrics": json.dumps({"round": 2})}, "metrics"),
    ({"metrics": "[" * 100_000}, "metrics"),
    ({"metrics": 5}, "metrics"),
    ({"header": "[1]"}, "header"), ({"header": "{"}, "header"), ({"header": "[" * 100_000}, "header"),
])
def test_forged_state_and_metrics_are_a_checkpoint_error(saved, entries, field):
    path, cfg = saved
    _forge(path, **entries)
    with pytest.raises(CheckpointError) as e:
        load_state(path, cfg)
    assert str(path) in str(e.value) and f"`{field}`" in str(e.value), str(e.value)


def test_another_schema_version_is_a_mismatch_not_a_schema_error(saved):
    path, cfg = saved
    _forge(path, {"schema_version": 2, "new_field": [1]})
    with pytest.raises(CheckpointMismatchError, match="schema v2"):
        load_state(path, cfg)


def test_a_checkpoint_written_before_the_metric_rows_still_loads(saved):
    """The format before issue 19 (and before aggregators kept state): no `metrics`, no
    `aggregator_state` entry."""
    path, cfg = saved
    _forge(path, drop=("metrics", "aggregator_state"))
    st = load_state(path, cfg)
    assert st.metrics == () and st.aggregator_state == {} and st.round_idx == 3


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage", "foreign"])
def test_damaged_checkpoint_is_a_checkpoint_error_naming_the_file(saved, damage):
    path, cfg = saved
    data = path.read_bytes()
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(bytes(range(256)) * 8)
    else:  # a valid torch file that is not a checkpoint
        torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError) as e:
        load_state(path, cfg)
    assert isinstance(e.value, FLCoreError) and str(path) in str(e.value)
    assert "--resume" in str(e.value)  # says what to do


def test_atomic_write_fsyncs_file_and_directory_after_the_rename(tmp_path, monkeypatch):
    synced = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        synced.append(("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"))
        real_fsync(fd)

    def replace(a, b):
        synced.append("rename")
        real_replace(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    atomic_write_bytes(tmp_path / "x.bin", lambda f: f.write(b"abc"))
    assert synced == ["file", "rename", "dir"]
    assert (tmp_path / "x.bin").read_bytes() == b"abc"


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_atomic_write_applies_the_umask_without_changing_it(tmp_path, monkeypatch, umask):
    calls = []
    real_umask = os.umask
    old = real_umask(umask)
    try:
        monkeypatch.setattr(os, "umask", lambda m: calls.append(m) or real_umask(m))
        atomic_write_bytes(tmp_path / "y.bin", lambda f: f.write(b"1"))
    finally:
        real_umask(old)
    assert stat.S_IMODE((tmp_path / "y.bin").stat().st_mode) == 0o666 & ~umask
    assert calls == []  # never set (setting it to read it races with other threads)


def test_failed_write_leaves_neither_temp_nor_target(tmp_path):
    def boom(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write_bytes(tmp_path / "z.bin", boom)
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_during_torch_save_is_the_os_error_not_torchs_runtime_error(saved, monkeypatch):
    """torch.save turns a failed write into `RuntimeError: ... unexpected pos`; the atomic
    write raises the OSError itself (ENOSPC: free space), keeps the old checkpoint and
    leaves no temp file."""
    import errno
    import io

    import fl_core.state as state_mod

    path, cfg = saved
    before = path.read_bytes()
    real_fdopen = os.fdopen

    class FullDisk(io.RawIOBase):
        def __init__(self, fd):
            self.f, self.n = real_fdopen(fd, "wb", buffering=0), 0

        def writable(self):
            return True

        def write(self, b):
            if self.n + len(b) > 100_000:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.n += len(b)
            return self.f.write(b)

        def fileno(self):
            return self.f.fileno()

        def close(self):
            self.f.close()
            super().close()

    monkeypatch.setattr(state_mod.os, "fdopen", lambda fd, mode: FullDisk(fd))
    with pytest.raises(OSError) as e:
        save_state(path, SimulationState(4, WEIGHTS, result_hash(cfg)))
    assert e.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert path.read_bytes() == before and os.listdir(path.parent) == ["state.pt"]
