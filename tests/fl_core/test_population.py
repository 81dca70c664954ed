"""The population interface (`fl_core.data.population`): eager and lazy sources agree.

`FederatedData` is the eager population; `SyntheticPopulation` and `TffH5Population` make
writers on demand. Writer k must be the same examples either way, so a lazy run trains
on exactly the data the eager run would have."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from fl_core.client import ClientRunner
from fl_core.config import DataConfig, parse_config
from fl_core.data import load_data, synthetic
from fl_core.data.base import from_writer_arrays
from fl_core.data.population import WriterPopulation, gather, is_lazy, seeded_writers
from fl_core.data.synthetic import SyntheticPopulation, generate, train_counts
from fl_core.types import ClientTask


def test_federated_data_is_the_eager_population():
    """Two writers worked by hand: a owns 2 train / 1 test rows, b 3 train / 0 test."""
    px = lambda n, v: np.full((n, 28, 28), v, np.uint8)  # noqa: E731
    data = from_writer_arrays(
        {"a": (px(2, 1), np.array([7, 1])), "b": (px(3, 2), np.array([0, 7, 7]))},
        {"a": (px(1, 3), np.array([4]))},
    )
    assert isinstance(data, WriterPopulation) and not is_lazy(data)
    np.testing.assert_array_equal(data.train_counts(), [2, 3])
    pixels, labels = data.writer_train(1)
    assert pixels.shape == (3, 28, 28) and (pixels == 2).all() and labels.tolist() == [0, 7, 7]
    assert data.writer_train_labels(0).tolist() == [7, 1]
    assert data.writer_test(0)[1].tolist() == [4] and data.writer_test(1)[0].shape == (0, 28, 28)
    gpx, glb, goff = gather(data, [1, 0])
    assert glb.tolist() == [0, 7, 7, 7, 1] and goff.tolist() == [0, 3, 5] and (gpx[3:] == 1).all()


def test_lazy_synthetic_writer_k_equals_eager_writer_k():
    eager, lazy = generate(40, 20, seed=5), SyntheticPopulation(40, 20, seed=5)
    assert isinstance(lazy, WriterPopulation) and is_lazy(lazy)
    np.testing.assert_array_equal(eager.train_counts(), lazy.train_counts())
    for k in (0, 1, 17, 39):
        for a, b in zip(eager.writer_train(k) + eager.writer_test(k), lazy.writer_train(k) + lazy.writer_test(k)):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(eager.writer_train_labels(k), lazy.writer_train_labels(k))
    assert lazy.rendered == [4, 4]  # labels alone render nothing; repeats come from the cache
    lazy.writer_train(0)
    assert lazy.rendered == [4, 4]


def test_counts_do_not_depend_on_k_across_blocks():
    """n_k comes in blocks of 2^16 writers: writer k's count is the same at any K."""
    small, big = train_counts(9, 10, 50), train_counts(9, 70_000, 50)
    np.testing.assert_array_equal(small, big[:10])
    np.testing.assert_array_equal(train_counts(9, 66_000, 50), big[:66_000])
    assert big.min() >= synthetic.MIN_TRAIN and 48 <= big.mean() <= 52


def test_lazy_population_pickles_as_its_parameters():
    lazy = SyntheticPopulation(1000, 20, seed=2)
    lazy.writer_train(3)
    blob = pickle.dumps(lazy)
    assert len(blob) < 300  # no pixels, no n_k array: an actor rebuilds them
    again = pickle.loads(blob)
    np.testing.assert_array_equal(again.writer_train(3)[0], lazy.writer_train(3)[0])


def test_loader_is_lazy_above_the_threshold(monkeypatch):
    monkeypatch.setattr(synthetic, "LAZY_ABOVE", 30)
    assert is_lazy(load_data(DataConfig(source="synthetic", num_writers=31, examples_per_writer=5), 0))
    assert not is_lazy(load_data(DataConfig(source="synthetic", num_writers=30, examples_per_writer=5), 0))
    cut = load_data(DataConfig(source="synthetic", num_writers=100, examples_per_writer=5, max_writers=40), 0)
    assert is_lazy(cut) and cut.num_writers == 40


def test_seeded_writers_are_distinct_deterministic_and_cover_all():
    order = list(seeded_writers(4, 3, 50))
    assert sorted(order) == list(range(50)) and order == list(seeded_writers(4, 3, 50))
    assert list(seeded_writers(4, 3, 50)) != list(seeded_writers(5, 3, 50))


@pytest.mark.parametrize("backend", ["sequential", "vectorized"])
def test_runner_trains_the_same_on_lazy_and_eager_data(backend):
    """Same writers, same tasks: the lazy runner stages the cohort into a block of its own,
    and every delta is bit-identical to the eager runner's (the same rows in the same
    order go through the same arithmetic)."""
    cfg = parse_config({"seed": 1, "fl": {"clients_per_round": 3, "local_epochs": 1, "batch_size": 8,
                                          "device": "cpu", "backend": backend},
                        "attack": {"kind": "none", "num_tasks": 2, "max_tasks": 2}})
    eager, lazy = generate(30, 12, seed=4), SyntheticPopulation(30, 12, seed=4)
    tasks = [ClientTask(0, k, 0, "benign", 100 + k) for k in (29, 3, 11)]
    gp = torch.zeros(sum(p.numel() for p in ClientRunner(cfg, eager).model.parameters()))
    a = ClientRunner(cfg, eager).run(tasks, gp)
    b = ClientRunner(cfg, lazy).run(tasks, gp)
    assert [r.num_examples for r in a] == [r.num_examples for r in b] == [int(eager.train_counts()[k]) for k in (29, 3, 11)]
    for x, y in zip(a, b):
        assert torch.equal(x.delta, y.delta)
