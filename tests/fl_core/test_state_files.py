"""Checkpoint files on disk: atomic writes (umask permissions, fsynced directory, no temp
left behind) and damaged checkpoints refused with the file named (issue 10, item 6)."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from fl_core.config import parse_config, result_hash
from fl_core.errors import CheckpointError, FLCoreError
from fl_core.state import SimulationState, atomic_write_bytes, load_state, save_state


@pytest.fixture
def saved(tmp_path):
    cfg = parse_config({})
    path = tmp_path / "state.pt"
    save_state(path, SimulationState(3, torch.arange(1000, dtype=torch.float32), result_hash(cfg)))
    return path, cfg


def test_checkpoint_round_trips(saved):
    path, cfg = saved
    st = load_state(path, cfg)
    assert st.round_idx == 3 and torch.equal(st.global_params, torch.arange(1000, dtype=torch.float32))


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
