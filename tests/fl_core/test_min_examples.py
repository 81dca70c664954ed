"""`data.min_examples` (issue 23, item 3): the writers with fewer train images are dropped
before K, ε·K and the target order are computed (LEAF's `--min_samples`; the paper's writers
hold ~100 images each, ours 62 on average).

The embedded numbers below were measured on the 439 writers (and are re-derived from the
offsets inside each test): at min_examples 40, 231 writers remain with 25,341 train and
2,834 test images (mean 109.7 train images), every one of them owning a 7.
"""

from __future__ import annotations

import numpy as np
import pytest

from fl_core.config import DataConfig, config_hash, flatten, parse_config
from fl_core.data import describe_data, load_data, synthetic
from fl_core.data.base import from_writer_arrays, writers_with_at_least
from fl_core.data.embedded import read_embedded
from fl_core.errors import ConfigError

EMBEDDED_AT_40 = (231, 25_341, 2_834)  # writers, train images, test images (measured)


@pytest.fixture(scope="module")
def embedded():
    return load_data(DataConfig(), 0)


def test_embedded_at_40_keeps_231_writers(embedded):
    n = np.diff(embedded.train_offsets)
    keep = n >= 40
    # the hand count from the unfiltered offsets agrees with the recorded figures
    assert (int(keep.sum()), int(n[keep].sum()), int(np.diff(embedded.test_offsets)[keep].sum())) == EMBEDDED_AT_40
    cut = load_data(DataConfig(min_examples=40), 0)
    assert (cut.num_writers, len(cut.train_labels), len(cut.test_labels)) == EMBEDDED_AT_40
    assert cut.train_counts().min() >= 40 and n[~keep].max() < 40
    # every remaining writer owns a source-label image (7): all 231 are eligible targets
    assert all((cut.writer_train_labels(k) == 7).any() for k in range(cut.num_writers))


def test_order_and_rows_are_preserved_and_thresholds_nest(embedded):
    """The kept writers are the original ones in their sorted order, each with exactly its
    own rows (train and test); a higher threshold keeps a subset."""
    ids = list(embedded.writer_ids)
    prev = set(ids)
    for m in (10, 40, 100):
        cut = writers_with_at_least(embedded, m)
        assert list(cut.writer_ids) == sorted(cut.writer_ids)
        assert list(cut.writer_ids) == [w for w in ids if w in set(cut.writer_ids)]
        assert set(cut.writer_ids) <= prev
        prev = set(cut.writer_ids)
        for j in (0, cut.num_writers // 2, cut.num_writers - 1):
            k = ids.index(cut.writer_ids[j])
            for a, b in zip(cut.writer_train(j) + cut.writer_test(j), embedded.writer_train(k) + embedded.writer_test(k)):
                np.testing.assert_array_equal(a, b)


def test_max_writers_cuts_after_the_filter(embedded):
    """First the filter, then the first N: the first 100 of the writers with ≥ 40 images."""
    both = load_data(DataConfig(min_examples=40, max_writers=100), 0)
    at40 = load_data(DataConfig(min_examples=40), 0)
    assert both.writer_ids == at40.writer_ids[:100]
    assert len(both.train_labels) == int(at40.train_offsets[100])


def test_by_hand_on_three_writers():
    """a: 2 train / 1 test rows, b: 3 / 0, c: 1 / 2. At 2: a and b; at 3: b alone."""
    px = lambda n, v: np.full((n, 28, 28), v, np.uint8)  # noqa: E731
    data = from_writer_arrays(
        {"a": (px(2, 1), np.array([7, 1])), "b": (px(3, 2), np.array([0, 7, 7])), "c": (px(1, 3), np.array([5]))},
        {"a": (px(1, 4), np.array([4])), "c": (px(2, 5), np.array([6, 6]))},
    )
    two = writers_with_at_least(data, 2)
    assert two.writer_ids == ("a", "b") and two.train_offsets.tolist() == [0, 2, 5]
    assert two.test_offsets.tolist() == [0, 1, 1] and two.test_labels.tolist() == [4]
    assert two.train_labels.tolist() == [7, 1, 0, 7, 7] and (two.train_pixels[2:] == 2).all()
    three = writers_with_at_least(data, 3)
    assert three.writer_ids == ("b",) and three.test_offsets.tolist() == [0, 0]
    assert writers_with_at_least(data, 1) is data  # nobody dropped: the same object
    with pytest.raises(ConfigError) as e:
        writers_with_at_least(data, 4)
    assert e.value.path == "data.min_examples" and "at most 3" in e.value.allowed


@pytest.mark.parametrize("m,max_writers", [(40, None), (40, 100), (150, None)])
def test_describe_data_counts_the_writers_load_data_returns(m, max_writers):
    """The grid-fit check's metadata (labels only) says what the trial will load."""
    cfg = DataConfig(min_examples=m, max_writers=max_writers)
    s, d = describe_data(cfg), load_data(cfg, 0)
    assert (s.num_writers, s.num_train, s.num_test) == (d.num_writers, len(d.train_labels), len(d.test_labels))
    assert s.name == d.name and s.labels.writer_ids == d.writer_ids
    np.testing.assert_array_equal(s.labels.train_labels, d.train_labels)
    np.testing.assert_array_equal(s.labels.test_offsets, d.test_offsets)
    assert s.labels.train_pixels.strides[0] == 0  # still a labels-only view: no pixel memory


def test_the_shared_tff_pair_filters_like_the_embedded_copy(shared_digits):
    """../shared/data/femnist_digits is the pair the embedded files were built from: the same
    231 writers remain at 40, through the tff-h5 loader and its metadata."""
    cfg = DataConfig(source="tff-h5", path=str(shared_digits), min_examples=40)
    d, s = load_data(cfg, 0), describe_data(cfg)
    assert (d.num_writers, len(d.train_labels), len(d.test_labels)) == EMBEDDED_AT_40
    assert (s.num_writers, s.num_train, s.num_test) == EMBEDDED_AT_40
    assert d.writer_ids == load_data(DataConfig(min_examples=40), 0).writer_ids


def test_synthetic_counts_without_labels(monkeypatch):
    """A synthetic population too large to index its labels still counts its writers after
    the filter, from n_k (`synthetic.train_counts`)."""
    monkeypatch.setattr(synthetic, "LABEL_WRITERS", 10)
    cfg = DataConfig(source="synthetic", num_writers=60, examples_per_writer=20, min_examples=20)
    s = describe_data(cfg, 3)
    n = synthetic.train_counts(3, 60, 20)
    assert s.labels is None and s.num_writers == int((n >= 20).sum()) < 60
    assert s.num_train == int(n[n >= 20].sum())
    d = load_data(cfg, 3)  # and the eager load agrees
    assert (d.num_writers, len(d.train_labels), len(d.test_labels)) == (s.num_writers, s.num_train, s.num_test)
    cut = describe_data(cfg.model_copy(update={"max_writers": 5}), 3)
    assert cut.num_writers == 5 and cut.num_train == int(n[n >= 20][:5].sum())


def test_lazy_populations_are_refused(monkeypatch):
    monkeypatch.setattr(synthetic, "LAZY_ABOVE", 30)
    cfg = DataConfig(source="synthetic", num_writers=31, examples_per_writer=5, min_examples=5)
    for call in (lambda: load_data(cfg, 0), lambda: describe_data(cfg, 0)):
        with pytest.raises(ConfigError) as e:
            call()
        assert e.value.path == "data.min_examples" and "lazy" in e.value.allowed and "0" in e.value.allowed
    # 0 stays fine on the lazy population
    assert load_data(cfg.model_copy(update={"min_examples": 0}), 0).num_writers == 31


@pytest.mark.parametrize("bad", [-1, True, "40", 2.5, None])
def test_bad_values_name_the_key(bad):
    with pytest.raises(ConfigError) as e:
        parse_config({"data": {"min_examples": bad}})
    assert e.value.path == "data.min_examples"


def test_default_is_hash_neutral_and_a_set_value_is_hashed():
    raw = {"attack": {"kind": "model-replacement", "fraction": 0.033}}
    base = parse_config(raw)
    zero = parse_config({**raw, "data": {"min_examples": 0}})
    forty = parse_config({**raw, "data": {"min_examples": 40}})
    assert flatten(base)["data.min_examples"] == 0
    assert config_hash(base) == config_hash(zero) != config_hash(forty)
    assert config_hash(forty) != config_hash(parse_config({**raw, "data": {"min_examples": 41}}))


def test_targets_and_attackers_are_drawn_on_the_filtered_writers():
    """K = 231 at 40: round(ε·K) = round(0.033·231) = 8 attackers (14 of the full 439), the
    N = 30 targets are writers of the filtered population, and neither set holds a writer
    with fewer than 40 images."""
    from fl_core.backdoors import select_backdoor
    from fl_core.backdoors.base import num_attackers
    from fl_core.sampling import attacker_pool

    cfg = parse_config({"data": {"min_examples": 40},
                        "attack": {"kind": "model-replacement", "fraction": 0.033, "num_tasks": 30}})
    data = load_data(cfg.data, cfg.seed)
    sets = select_backdoor(cfg, data)
    pool = attacker_pool(cfg, data.num_writers, sets.reserved)
    assert num_attackers(cfg, data.num_writers) == len(pool) == 8
    assert num_attackers(cfg, 439) == 14
    n = data.train_counts()
    assert len(sets.targets) == 30 and min(n[list(sets.targets)]) >= 40 and min(n[list(pool)]) >= 40
    # D_mal: every target owns several 7s (none with 1–3, unlike the full population)
    sevens = [int((data.writer_train_labels(k) == 7).sum()) for k in sets.targets]
    assert min(sevens) >= 4


def test_a_simulation_runs_on_the_filtered_population():
    """One round through `Simulation` on the first 60 embedded writers with ≥ 40 images."""
    from fl_core.simulate import Simulation

    cfg = parse_config({"data": {"min_examples": 40, "max_writers": 60},
                        "fl": {"rounds": 1, "clients_per_round": 3, "local_epochs": 1, "device": "cpu",
                               "eval_subsample": 50},
                        "attack": {"kind": "model-replacement", "fraction": 0.05, "num_tasks": 2, "max_tasks": 2,
                                   "frequency": 1}})
    sim = Simulation(cfg)
    (metrics,) = sim.run()
    assert sim.data.num_writers == 60 and sim.data.train_counts().min() >= 40
    assert np.isfinite(metrics["main_acc"])


def test_fltrust_root_set_comes_from_qualifying_writers_beyond_the_population():
    """FLTrust reloads the source without max_writers and draws beyond it: with the filter
    first, its root writers also hold ≥ 40 images and none is a client (filter, then cut)."""
    from fl_core.aggregators.fltrust import draw_root_set

    cfg = DataConfig(min_examples=40, max_writers=100)
    population = load_data(cfg, 0)
    source = load_data(cfg.model_copy(update={"max_writers": None}), 0)
    root = draw_root_set(source, cfg.max_writers, 100, 0)
    assert min(root.positions) >= 100 and not set(root.writer_ids) & set(population.writer_ids)
    assert all(source.num_train(k) >= 40 for k in root.positions)
