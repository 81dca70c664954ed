"""Writer-partitioned digits from one of several sources, behind one interface.

`load_data(cfg.data, seed)` looks `cfg.source` up in a read-only registry and returns a
`WriterPopulation` (`fl_core.data.population`): an eager `FederatedData`, or for a large
synthetic population a lazy one that makes writers on demand, optionally cut to its
first `max_writers` writers. Adding a source takes one module with a `load(cfg, seed)`
function and one line in `SOURCES`.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Callable, Mapping

from fl_core.config import DataConfig
from fl_core.data import embedded, leaf, synthetic, tff_h5
from fl_core.data.base import FederatedData
from fl_core.data.population import WriterPopulation
from fl_core.errors import UnknownComponentError

Loader = Callable[[DataConfig, int], WriterPopulation]

SOURCES: Mapping[str, Loader] = MappingProxyType({
    "embedded": embedded.load,
    "synthetic": synthetic.load,
    "tff-h5": tff_h5.load,
    "leaf": leaf.load,
})

__all__ = ["FederatedData", "SOURCES", "WriterPopulation", "first_writers", "load_data"]


def first_writers(data: WriterPopulation, n: int) -> WriterPopulation:
    """The first `n` writers in sorted order (all of them if there are fewer). The arrays
    are copied, so the dropped writers' memory is freed. (A lazy source applies
    `max_writers` itself when it loads.)"""
    if n >= data.num_writers:
        return data
    assert isinstance(data, FederatedData), "lazy sources cut to max_writers in their loader"
    tr, te = int(data.train_offsets[n]), int(data.test_offsets[n])
    out = FederatedData(
        data.writer_ids[:n],
        data.train_pixels[:tr].copy(),
        data.train_labels[:tr].copy(),
        data.train_offsets[: n + 1].copy(),
        data.test_pixels[:te].copy(),
        data.test_labels[:te].copy(),
        data.test_offsets[: n + 1].copy(),
        f"{data.name} (first {n} writers)",
    )
    out.validate()
    return out


def load_data(cfg: DataConfig, seed: int) -> WriterPopulation:
    """Load the writers `cfg` names.

    Args:
        cfg: `data.*` of the simulation config (`source`, `path`, `max_writers`, ...).
        seed: the simulation seed; only `synthetic` uses it (Stream.DATA).

    Returns:
        A WriterPopulation (FederatedData unless the source is lazy at this size) with
        writers sorted by id; client index k is a writer's position.

    Raises:
        UnknownComponentError: `cfg.source` is not registered.
        DatasetError: the source's files are missing or malformed.
    """
    loader = SOURCES.get(cfg.source)
    if loader is None:
        raise UnknownComponentError("data source", cfg.source, SOURCES)
    data = loader(cfg, seed)
    return data if cfg.max_writers is None else first_writers(data, cfg.max_writers)
