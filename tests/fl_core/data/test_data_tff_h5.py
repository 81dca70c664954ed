"""The TFF h5 loader: exact round-trip on a tiny file, clear errors, and the real counts."""

from __future__ import annotations

import csv
from pathlib import Path

import h5py
import numpy as np
import pytest

from fl_core.config import DataConfig
from fl_core.data import load_data
from fl_core.data.tff_h5 import read_tff_dir
from fl_core.errors import DatasetError

TRAIN, TEST = "fed_emnist_digitsonly_train.h5", "fed_emnist_digitsonly_test.h5"


def _pair(tmp_path: Path, write, train: dict, test: dict) -> Path:
    write(tmp_path / TRAIN, train)
    write(tmp_path / TEST, test)
    return tmp_path


def test_tiny_file_round_trips_exactly(tmp_path, tiny_writers, write_tff_h5):
    train = tiny_writers(0, 5)
    test = {w: v for i, (w, v) in enumerate(tiny_writers(1, 5).items()) if i != 2}  # writer 2: no test rows
    test["zz_test_only"] = tiny_writers(2, 1)["f0000_00"]
    data = load_data(DataConfig(source="tff-h5", path=str(_pair(tmp_path, write_tff_h5, train, test))), 0)

    assert data.writer_ids == tuple(sorted(train))  # the test-only writer is dropped
    for k, w in enumerate(data.writer_ids):
        px, lab = train[w]
        got = data.train_pixels[data.train_slice(k)]
        assert got.dtype == np.uint8
        # the model's view float32(k)/255 equals TFF's float32 value bit for bit
        np.testing.assert_array_equal(got.astype(np.float32) / np.float32(255), px)
        np.testing.assert_array_equal(data.train_labels[data.train_slice(k)], lab)
        if w in test:
            np.testing.assert_array_equal(data.test_pixels[data.test_slice(k)].astype(np.float32) / 255, test[w][0])
            np.testing.assert_array_equal(data.test_labels[data.test_slice(k)], test[w][1])
        else:
            assert data.test_slice(k).start == data.test_slice(k).stop
    assert data.test_labels.dtype == np.int64 and data.name.startswith("tff-h5:")


def test_digits_and_letters_pair_keeps_digits_only(tmp_path, tiny_writers, write_tff_h5):
    writers = tiny_writers(3, 3)
    w0 = next(iter(writers))
    px, lab = writers[w0]
    writers[w0] = (px, np.where(np.arange(len(lab)) % 2 == 0, lab, 10 + lab).astype(np.int32))
    write_tff_h5(tmp_path / "fed_emnist_train.h5", writers)
    write_tff_h5(tmp_path / "fed_emnist_test.h5", writers)
    data = read_tff_dir(tmp_path)
    keep = writers[w0][1] < 10
    np.testing.assert_array_equal(data.train_labels[data.train_slice(0)], writers[w0][1][keep])
    np.testing.assert_array_equal(data.train_pixels[data.train_slice(0)].astype(np.float32) / 255, px[keep])
    assert int(data.train_labels.max()) <= 9


def test_missing_directory_says_how_to_prepare(tmp_path):
    with pytest.raises(DatasetError) as e:
        load_data(DataConfig(source="tff-h5", path=str(tmp_path / "nope")), 0)
    assert "does not exist" in str(e.value) and "fl-sweep data download" in str(e.value)


def test_missing_test_file(tmp_path, tiny_writers, write_tff_h5):
    write_tff_h5(tmp_path / TRAIN, tiny_writers(0, 2))
    with pytest.raises(DatasetError, match=f"{TEST} is missing"):
        read_tff_dir(tmp_path)


def test_empty_directory_names_the_expected_files(tmp_path):
    with pytest.raises(DatasetError, match=TRAIN):
        read_tff_dir(tmp_path)


def test_not_hdf5(tmp_path, tiny_writers, write_tff_h5):
    write_tff_h5(tmp_path / TEST, tiny_writers(0, 2))
    (tmp_path / TRAIN).write_bytes(b"<html>404</html>")
    with pytest.raises(DatasetError, match="not a readable HDF5 file"):
        read_tff_dir(tmp_path)


def _malformed(path: Path, how: str) -> None:
    with h5py.File(path, "w") as f:
        if how == "no-examples":
            f.create_group("data")
            return
        g = f.create_group("examples/f0001_01")
        g.create_dataset("label", data=np.array([1, 12 if how == "letter" else 2], np.int32))
        if how == "no-pixels":
            return
        shape = (2, 32, 32) if how == "shape" else (2, 28, 28)
        fill = 2.0 if how == "range" else (0.0 if how == "inverted" else 1.0)
        g.create_dataset("pixels", data=np.full(shape, fill, np.float32))


@pytest.mark.parametrize(
    "how, message",
    [
        ("no-examples", "no `examples` group"),
        ("no-pixels", "lacks a `label` or `pixels`"),
        ("shape", r"expected integer \(N,\) / float32 or uint8 \(N, 28, 28\)"),
        ("letter", r"labels outside 0\.\.9"),
        ("range", r"outside \[0, 1\]"),
        ("inverted", "background looks black"),
    ],
)
def test_malformed_layout(tmp_path, tiny_writers, write_tff_h5, how, message):
    _malformed(tmp_path / TRAIN, how)
    write_tff_h5(tmp_path / TEST, tiny_writers(0, 1))
    with pytest.raises(DatasetError, match=message) as e:
        read_tff_dir(tmp_path)
    assert str(tmp_path / TRAIN) in str(e.value)


@pytest.mark.shared_data
def test_shared_real_digits_counts(shared_h5, shared_digits):
    """Counts from ../shared/data/femnist_digits/README.md and writers.csv."""
    data = shared_h5
    assert data.num_writers == 439
    assert len(data.train_labels) == 27_443 and len(data.test_labels) == 3_070
    assert np.bincount(data.train_labels).tolist() == [2730, 3015, 2722, 2758, 2658, 2602, 2711, 2867, 2657, 2723]
    assert np.bincount(data.test_labels).tolist() == [291, 346, 328, 316, 307, 277, 321, 294, 297, 293]
    assert int((np.diff(data.test_offsets) == 0).sum()) == 11  # writers with < 5 images
    with open(shared_digits / "writers.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["writer_id"] for r in rows] == list(data.writer_ids)
    assert [int(r["n_train"]) for r in rows] == np.diff(data.train_offsets).tolist()
    assert [int(r["n_test"]) for r in rows] == np.diff(data.test_offsets).tolist()
    # TFF convention kept: mostly white paper (README: 88.09% of pixels exactly 1.0)
    assert 0.87 < float((data.train_pixels == 255).mean()) < 0.89


def _damage_chunk(path: Path, writer: str) -> None:
    """Overwrite the compressed bytes of one writer's pixel chunk: the file still opens,
    the damage shows only when that region is read."""
    with h5py.File(path, "r") as f:
        info = f[f"examples/{writer}/pixels"].id.get_chunk_info(0)
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset)
        fh.write(b"\xff" * info.size)


def test_corrupt_region_and_truncated_file_name_the_file(tmp_path, tiny_writers, write_tff_h5):
    writers = tiny_writers(0, 3)
    with h5py.File(tmp_path / TRAIN, "w") as f:
        for w, (px, lab) in writers.items():
            f.create_dataset(f"examples/{w}/label", data=lab)
            f.create_dataset(f"examples/{w}/pixels", data=px, chunks=px.shape, compression="gzip")
    with h5py.File(tmp_path / TEST, "w") as f:
        for w, (px, lab) in writers.items():
            f.create_dataset(f"examples/{w}/label", data=lab)
            f.create_dataset(f"examples/{w}/pixels", data=px)
    read_tff_dir(tmp_path)  # intact: reads
    _damage_chunk(tmp_path / TRAIN, sorted(writers)[1])
    with pytest.raises(DatasetError, match="damaged HDF5 file") as e:
        read_tff_dir(tmp_path)
    assert str(tmp_path / TRAIN) in str(e.value)
    data = (tmp_path / TEST).read_bytes()
    (tmp_path / TEST).write_bytes(data[: len(data) // 2])
    (tmp_path / TRAIN).unlink()
    write_tff_h5(tmp_path / TRAIN, writers)
    with pytest.raises(DatasetError, match="HDF5") as e:
        read_tff_dir(tmp_path)
    assert str(tmp_path / TEST) in str(e.value)
