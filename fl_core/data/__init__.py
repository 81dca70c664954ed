"""Writer-partitioned digits from one of several sources, behind one interface.

`load_data(cfg.data, seed)` looks `cfg.source` up in a read-only registry and returns a
`WriterPopulation` (`fl_core.data.population`): an eager `FederatedData`, or for a large
synthetic population a lazy one that makes writers on demand, optionally cut to its
first `max_writers` writers; `min_examples` drops the writers with fewer train images
before that (eager populations only). `describe_data(cfg.data, seed)` says what `load_data`
would return (K, image counts, labels) from metadata only: no pixels, no torch, so a grid is
checked against its data before anything runs. Adding a source takes one module with a
`load(cfg, seed)` and a `describe(cfg, seed)` function and one `SOURCES.register` line here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Mapping

from fl_core.config import DataConfig
from fl_core.data import embedded, leaf, synthetic, tff_h5
from fl_core.data.base import DataSummary, FederatedData, lazy_refusal, writers_with_at_least
from fl_core.data.population import WriterPopulation
from fl_core.errors import DatasetError, UnknownComponentError
from fl_core.plugins import Registry

Loader = Callable[[DataConfig, int], WriterPopulation]
Describer = Callable[[DataConfig, int], DataSummary]



@dataclass(frozen=True)
class SourceSpec:
    """A registered data source (`data.source`).

    Attributes:
        name: its `data.source` value.
        load: (data config, seed) → the writers.
        describe: (data config, seed) → what `load` would return, from metadata only.
        needs_path: the source reads `data.path` (a config without one is refused).
    """

    name: str
    load: Loader
    describe: Describer
    needs_path: bool = False


#: name → SourceSpec (the same `Registry` shape as the plug-ins).
SOURCES: Registry[SourceSpec] = Registry("data source", "data.source")



def _describe_leaf(cfg: DataConfig, seed: int) -> DataSummary:
    """LEAF keeps its labels inside the JSON next to the pixels: without reading every
    example only the layout can be checked (`leaf.read_leaf_dir`'s first checks); K is
    left unknown."""
    if not cfg.path:
        raise DatasetError("data.path", "not set", leaf.HOW_TO_PREPARE)
    directory = Path(cfg.path).expanduser()
    train_dir = directory / "train"
    if not train_dir.is_dir() or not any(train_dir.glob("*.json")):
        raise DatasetError(str(directory), "no train/*.json", leaf.HOW_TO_PREPARE)
    return DataSummary(f"leaf:{directory}", None)


SOURCES.register(SourceSpec("embedded", embedded.load, embedded.describe))
SOURCES.register(SourceSpec("synthetic", synthetic.load, synthetic.describe))
SOURCES.register(SourceSpec("tff-h5", tff_h5.load, tff_h5.describe, needs_path=True))
SOURCES.register(SourceSpec("leaf", leaf.load, _describe_leaf, needs_path=True))

#: name → describe function, read-only (a view of `SOURCES`).
DESCRIBERS: Mapping[str, Describer] = MappingProxyType({name: s.describe for name, s in SOURCES.items()})

__all__ = ["DESCRIBERS", "DataSummary", "FederatedData", "SOURCES", "SourceSpec", "WriterPopulation", "describe_data",
           "first_writers", "load_data"]


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
        writers sorted by id; client index k is a writer's position. The writers with fewer
        than `min_examples` train images are dropped first, then `max_writers` cuts, so the
        first N writers are the first N that qualify (FLTrust's root set, drawn beyond them
        from the same filtered order, stays disjoint from them).

    Raises:
        UnknownComponentError: `cfg.source` is not registered.
        DatasetError: the source's files are missing or malformed.
        ConfigError: `min_examples` on a lazy population, or one that leaves no writer.
    """
    spec = SOURCES.get(cfg.source)
    if spec is None:
        raise UnknownComponentError("data source", cfg.source, SOURCES)
    data = spec.load(cfg, seed)
    if cfg.min_examples > 0:
        if not isinstance(data, FederatedData):
            raise lazy_refusal(data.name, cfg.min_examples)
        data = writers_with_at_least(data, cfg.min_examples)
    return data if cfg.max_writers is None else first_writers(data, cfg.max_writers)


def describe_data(cfg: DataConfig, seed: int = 0) -> DataSummary:
    """How many writers and images the data `cfg` names has, from metadata only.

    Reads the h5 layout and label arrays (tff-h5, embedded), the synthetic config and its
    counts, or checks the LEAF layout; never pixels, never torch. The answer describes what
    `load_data(cfg, seed)` returns (the same writers, after `min_examples` and `max_writers`).

    Args:
        cfg: `data.*` of the simulation config.
        seed: the simulation seed; only `synthetic` uses it.

    Raises:
        UnknownComponentError: `cfg.source` is not registered.
        DatasetError: the source's files are missing or their layout is malformed (what
            `load_data` would raise before reading pixels).
    """
    describe = DESCRIBERS.get(cfg.source)
    if describe is None:
        raise UnknownComponentError("data source", cfg.source, DESCRIBERS)
    summary = describe(cfg, seed)
    if cfg.min_examples > 0:
        if summary.lazy:
            raise lazy_refusal(summary.name, cfg.min_examples)
        if cfg.max_writers is not None:  # the filter comes first: describe every writer
            summary = describe(cfg.model_copy(update={"max_writers": None}), seed)
        summary = summary.at_least(cfg.min_examples)
    return summary.first(cfg.max_writers)
