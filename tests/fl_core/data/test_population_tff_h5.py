"""The lazy tff-h5 population reads each writer when asked, and reads what the eager
reader reads (`fl_core.data.tff_h5.TffH5Population`)."""

from __future__ import annotations

import pickle

import numpy as np

from fl_core.config import DataConfig
from fl_core.data import tff_h5
from fl_core.data.population import is_lazy
from fl_core.data.tff_h5 import TffH5Population, read_tff_dir


def test_lazy_tff_h5_equals_the_eager_reader(tmp_path, tiny_writers, write_tff_h5):
    train, test = tiny_writers(1, 7), tiny_writers(2, 7)
    test.pop(sorted(test)[2])  # a writer without test images
    write_tff_h5(tmp_path / "fed_emnist_digitsonly_train.h5", train)
    write_tff_h5(tmp_path / "fed_emnist_digitsonly_test.h5", test)
    eager, lazy = read_tff_dir(tmp_path), TffH5Population(tmp_path)
    assert lazy.writer_ids == eager.writer_ids and is_lazy(lazy)
    np.testing.assert_array_equal(lazy.train_counts(), eager.train_counts())
    again = pickle.loads(pickle.dumps(lazy))  # an actor opens the files itself
    for k in range(eager.num_writers):
        for a, b in zip(eager.writer_train(k) + eager.writer_test(k), again.writer_train(k) + again.writer_test(k)):
            np.testing.assert_array_equal(a, b)


def test_digits_and_letters_are_filtered_the_same_way(tmp_path, tiny_writers, write_tff_h5):
    train = {w: (px, (lab + 5).astype(np.int32)) for w, (px, lab) in tiny_writers(3, 5).items()}  # labels 5..14
    write_tff_h5(tmp_path / "fed_emnist_train.h5", train)
    write_tff_h5(tmp_path / "fed_emnist_test.h5", tiny_writers(4, 5))
    eager, lazy = read_tff_dir(tmp_path), TffH5Population(tmp_path)
    assert lazy.writer_ids == eager.writer_ids
    for k in range(eager.num_writers):
        for a, b in zip(eager.writer_train(k), lazy.writer_train(k)):
            np.testing.assert_array_equal(a, b)


def test_load_reads_lazily_only_above_the_size_limit(tmp_path, tiny_writers, write_tff_h5, monkeypatch):
    write_tff_h5(tmp_path / "fed_emnist_digitsonly_train.h5", tiny_writers(1, 4))
    write_tff_h5(tmp_path / "fed_emnist_digitsonly_test.h5", tiny_writers(2, 4))
    cfg = DataConfig(source="tff-h5", path=str(tmp_path))
    assert not is_lazy(tff_h5.load(cfg, 0))
    monkeypatch.setattr(tff_h5, "LAZY_BYTES", 1)
    assert is_lazy(tff_h5.load(cfg, 0))
