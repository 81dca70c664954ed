"""The LEAF JSON loader: the real fixture matches the h5 writers image for image."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from fl_core.config import DataConfig
from fl_core.data import load_data
from fl_core.data.leaf import read_leaf_dir
from fl_core.errors import DatasetError

FIXTURE = "all_data_0_niid_05_keep_0_train_9.json"


def _image(level: int) -> list[float]:
    """784 floats k/255: white paper with one dark pixel whose value encodes `level`."""
    x = [1.0] * 784
    x[400] = level / 255
    return x


def _write(path: Path, user_data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {"users": list(user_data), "num_samples": [len(d["y"]) for d in user_data.values()], "user_data": user_data}
    path.write_text(json.dumps(blob))


@pytest.fixture(scope="module")
def leaf_fixture(shared_digits: Path, tmp_path_factory) -> Path:
    """The shared LEAF sample as a LEAF directory with only train/."""
    root = tmp_path_factory.mktemp("leaf")
    (root / "train").mkdir()
    shutil.copy(shared_digits / "leaf_sample" / FIXTURE, root / "train" / FIXTURE)
    return root


@pytest.mark.shared_data
def test_real_leaf_sample_matches_the_h5_writers(leaf_fixture, shared_h5):
    data = load_data(DataConfig(source="leaf", path=str(leaf_fixture)), 0)
    assert data.num_writers == 15 and len(data.train_labels) == 598
    assert len(data.test_labels) == 0 and data.name.endswith("(no test/)")
    assert 0 <= data.train_labels.min() and data.train_labels.max() <= 9
    assert data.train_pixels.dtype == np.uint8 and float((data.train_pixels == 255).mean()) > 0.8  # not inverted
    h5_index = {w: k for k, w in enumerate(shared_h5.writer_ids)}
    for k, w in enumerate(data.writer_ids):
        j = h5_index[w]
        known = {}
        for px, lab in (
            (shared_h5.train_pixels[shared_h5.train_slice(j)], shared_h5.train_labels[shared_h5.train_slice(j)]),
            (shared_h5.test_pixels[shared_h5.test_slice(j)], shared_h5.test_labels[shared_h5.test_slice(j)]),
        ):
            known.update({p.tobytes(): int(y) for p, y in zip(px, lab)})
        for p, y in zip(data.train_pixels[data.train_slice(k)], data.train_labels[data.train_slice(k)]):
            assert known.get(p.tobytes()) == int(y), f"writer {w}: a LEAF digit is not in the h5 copy"


def test_letters_dropped_and_test_writers_may_be_missing(tmp_path):
    _write(tmp_path / "train" / "a.json", {
        "w1": {"x": [_image(1), _image(2), _image(3)], "y": [3, 15, 7]},
        "w2": {"x": [_image(4)], "y": [40]},           # letters only: not a client
        "w0": {"x": [_image(5), _image(6)], "y": [0, 9]},
    })
    _write(tmp_path / "train" / "b.json", {"w1": {"x": [_image(7)], "y": [1]}})  # split over two files
    _write(tmp_path / "test" / "a.json", {"w1": {"x": [_image(8), _image(9)], "y": [2, 61]}})
    data = read_leaf_dir(tmp_path)
    assert data.writer_ids == ("w0", "w1")
    assert data.train_labels.tolist() == [0, 9, 3, 7, 1]
    assert data.train_pixels[:, 14, 8].tolist() == [5, 6, 1, 3, 7]  # pixel 400 = row 14, col 8
    assert data.train_offsets.tolist() == [0, 2, 5]
    assert data.test_offsets.tolist() == [0, 0, 1]  # w0 has no test JSON entry
    assert data.test_labels.tolist() == [2] and data.test_pixels[0, 14, 8] == 8


def test_no_train_directory(tmp_path):
    with pytest.raises(DatasetError, match=r"no train/\*\.json"):
        read_leaf_dir(tmp_path)


@pytest.mark.parametrize(
    "user_data, message",
    [
        ({"w": {"x": [[0.5] * 783], "y": [1]}}, "a digit image has 783 pixels"),
        ({"w": {"x": [_image(1)], "y": [1, 2]}}, "1 images but 2 labels"),
        ({"w": {"x": [[2.0] * 784], "y": [1]}}, r"outside \[0, 1\]"),
        ({"w": {"y": [1]}}, "`user_data.w.x`: Field required"),
    ],
)
def test_malformed_json(tmp_path, user_data, message):
    _write(tmp_path / "train" / "bad.json", user_data)
    with pytest.raises(DatasetError, match=message) as e:
        read_leaf_dir(tmp_path)
    assert "bad.json" in str(e.value)


def test_not_json(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "x.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON at line 1, column 2.*LEAF FEMNIST JSON"):
        read_leaf_dir(tmp_path)


def test_train_users_counts_writers_through_the_guarded_reader(tmp_path):
    """What the report's privacy accounting counts as K, without building the data; a
    damaged file is a DatasetError naming it, not a RecursionError."""
    from fl_core.data.leaf import train_users

    _write(tmp_path / "train" / "a.json", {"w1": {"x": [_image(1)], "y": [3]}, "w2": {"x": [], "y": []}})
    _write(tmp_path / "train" / "b.json", {"w1": {"x": [_image(2)], "y": [4]}, "w3": {"x": [], "y": []}})
    assert train_users(tmp_path) == {"w1", "w2", "w3"}
    (tmp_path / "train" / "c.json").write_bytes(b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(DatasetError, match="c.json: nested more than 16 levels"):
        train_users(tmp_path)
