"""`load_data`: registry dispatch, unknown names, and `data.max_writers`."""

from __future__ import annotations

import numpy as np
import pytest

from fl_core.config import DataConfig, parse_config
from fl_core.data import SOURCES, load_data
from fl_core.errors import ConfigError, UnknownComponentError


def test_registry_covers_every_configurable_source_and_is_read_only():
    assert set(SOURCES) == {"embedded", "synthetic", "tff-h5", "leaf"}
    with pytest.raises(ConfigError, match=r"data.source.*did you mean `tff-h5`.*one of: embedded, leaf, synthetic, tff-h5"):
        DataConfig(source="tff_h5")
    with pytest.raises(TypeError):
        SOURCES["mine"] = lambda cfg, seed: None  # type: ignore[index]


def test_unknown_source_lists_the_available_ones():
    cfg = DataConfig.model_construct(source="mnist")  # bypasses validation, as a plug-in name might
    with pytest.raises(UnknownComponentError) as e:
        load_data(cfg, 0)
    assert "mnist" in str(e.value) and all(name in str(e.value) for name in SOURCES)


def test_max_writers_keeps_the_first_writers_with_recomputed_offsets():
    full = load_data(DataConfig(), 0)
    cut = load_data(parse_config({"data": {"max_writers": 5}}).data, 0)
    assert cut.writer_ids == full.writer_ids[:5]
    tr, te = int(full.train_offsets[5]), int(full.test_offsets[5])
    np.testing.assert_array_equal(cut.train_offsets, full.train_offsets[:6])
    np.testing.assert_array_equal(cut.test_offsets, full.test_offsets[:6])
    np.testing.assert_array_equal(cut.train_pixels, full.train_pixels[:tr])
    np.testing.assert_array_equal(cut.test_labels, full.test_labels[:te])
    assert cut.train_offsets[-1] == len(cut.train_labels) == tr and "first 5 writers" in cut.name
    assert cut.train_pixels.base is None  # a copy: the 434 dropped writers are not kept alive
    cut.validate()


def test_max_writers_above_the_population_keeps_everyone():
    data = load_data(DataConfig(source="synthetic", num_writers=6, examples_per_writer=5, max_writers=50), 1)
    assert data.num_writers == 6
