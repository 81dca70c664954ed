"""The embedded real writers: counts, integrity check, and identity with the shared h5."""

from __future__ import annotations

import hashlib
import importlib.util
import shutil

import numpy as np
import pytest

from fl_core.config import DataConfig
from fl_core.data import embedded, load_data
from fl_core.errors import DatasetError


@pytest.fixture(scope="module")
def emb():
    return load_data(DataConfig(source="embedded"), 0)


def test_embedded_is_the_default_and_has_all_439_writers(emb):
    assert DataConfig().source == "embedded"
    assert emb.num_writers == 439
    assert len(emb.train_labels) == 27_443 and len(emb.test_labels) == 3_070
    assert emb.writer_ids[0] == "f0005_26" and list(emb.writer_ids) == sorted(emb.writer_ids)
    has_train_seven = [bool((emb.train_labels[emb.train_slice(k)] == 7).any()) for k in range(emb.num_writers)]
    assert sum(has_train_seven) >= 60  # enough target writers for N = 50 backdoor tasks


def test_embedded_files_are_small_and_shipped_in_the_package():
    sizes = [(embedded.EMBEDDED_DIR / n).stat().st_size for n in embedded.EMBEDDED_FILES]
    assert sum(sizes) < 8_000_000
    assert embedded.EMBEDDED_DIR.parent.name == "data" and embedded.EMBEDDED_DIR.parent.parent.name == "fl_core"
    assert (embedded.EMBEDDED_DIR / "PROVENANCE.md").is_file()


@pytest.mark.shared_data
def test_embedded_pixels_equal_the_shared_h5(emb, shared_h5):
    assert emb.writer_ids == shared_h5.writer_ids
    for field in ("train_offsets", "test_offsets", "train_labels", "test_labels", "test_pixels"):
        np.testing.assert_array_equal(getattr(emb, field), getattr(shared_h5, field), err_msg=field)
    for k in (0, 1, 100, 438):  # spot-check writers' train images bit for bit
        ours, theirs = emb.train_pixels[emb.train_slice(k)], shared_h5.train_pixels[shared_h5.train_slice(k)]
        np.testing.assert_array_equal(ours, theirs)


def test_corrupted_file_is_refused(tmp_path):
    for name in embedded.EMBEDDED_FILES:
        shutil.copy(embedded.EMBEDDED_DIR / name, tmp_path / name)
    assert embedded.read_embedded(tmp_path).num_writers == 439  # an intact copy loads
    target = tmp_path / embedded.EMBEDDED_FILES[0]
    blob = bytearray(target.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    target.write_bytes(bytes(blob))
    with pytest.raises(DatasetError) as e:
        embedded.read_embedded(tmp_path)
    assert embedded.SHA256[embedded.EMBEDDED_FILES[0]] in str(e.value) and "corrupted" in str(e.value)


def test_missing_file_is_refused(tmp_path):
    shutil.copy(embedded.EMBEDDED_DIR / embedded.EMBEDDED_FILES[0], tmp_path)
    with pytest.raises(DatasetError, match="missing"):
        embedded.read_embedded(tmp_path)


@pytest.mark.shared_data
def test_build_script_reproduces_the_shipped_files(shared_digits, tmp_path, capsys):
    script = embedded.EMBEDDED_DIR / "build_embedded.py"
    spec = importlib.util.spec_from_file_location("build_embedded", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(shared_digits, tmp_path) == 0
    for name in embedded.EMBEDDED_FILES:
        assert hashlib.sha256((tmp_path / name).read_bytes()).hexdigest() == embedded.SHA256[name]
    assert "(budget 8,000,000)" in capsys.readouterr().out
