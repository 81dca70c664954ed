"""The population interface: K writers, their n_k, and any one writer's examples on demand.

Two kinds implement it. `FederatedData` (eager) holds every writer's pixels in contiguous
arrays: the fast path for real data (3,383 EMNIST writers fit anywhere). A lazy population
(`fl_core.data.synthetic.SyntheticPopulation`) holds only the n_k array and makes writer
k's examples when asked, so K = 10^7 writers cost O(K) integers plus O(cohort) images.
Code that must see every writer (the eager target order, evaluation on the whole test
split) branches on `lazy`; everything else asks for writers one at a time.

Lazy populations never enumerate writers in Python: a seeded order of distinct writers is
drawn by rejection (`seeded_writers`), which touches O(writers taken) memory whatever K is.
"""

from __future__ import annotations

from typing import Iterator, Protocol, runtime_checkable

import numpy as np

from fl_core.rng import Stream, numpy_rng

_DRAW = 1024  # writers drawn per step of `seeded_writers`


@runtime_checkable
class WriterPopulation(Protocol):
    """Writer-partitioned digits, writer k being the stable client index k.

    Examples are (pixels uint8 (n, 28, 28), labels int64 (n,)), TFF convention (background
    255). `lazy` says whether examples are made on demand (then never enumerate all K)."""

    name: str
    lazy: bool

    @property
    def num_writers(self) -> int: ...

    def train_counts(self) -> np.ndarray:
        """n_k for every writer: int64 (K,), the FedAvg weights."""
        ...

    def writer_train(self, k: int) -> tuple[np.ndarray, np.ndarray]: ...

    def writer_test(self, k: int) -> tuple[np.ndarray, np.ndarray]: ...

    def writer_train_labels(self, k: int) -> np.ndarray:
        """Writer k's train labels only (cheap for a lazy source: no pixels rendered)."""
        ...


def is_lazy(data: object) -> bool:
    return bool(getattr(data, "lazy", False))


def seeded_writers(seed: int, key: int, num_writers: int) -> Iterator[int]:
    """Distinct writers 0..K−1 in a seeded uniformly random order, without a permutation of K.

    Draws writer indices from `numpy_rng(seed, POPULATION, key)` and skips repeats, so a
    prefix of length n is a uniform sample without replacement and costs O(n) memory. The
    order ends after all K writers (late draws slow down, so callers take prefixes ≪ K).
    """
    rng = numpy_rng(seed, Stream.POPULATION, key)
    seen: set[int] = set()
    while len(seen) < num_writers:
        for k in rng.integers(0, num_writers, size=_DRAW).tolist():
            if k not in seen:
                seen.add(k)
                yield k
                if len(seen) == num_writers:
                    return


def gather(data: WriterPopulation, writers, split: str = "train") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The examples of `writers` concatenated in the given order: (pixels, labels, offsets),
    offsets int64 (len(writers) + 1,) so writer writers[i] owns rows offsets[i]:offsets[i+1]."""
    get = data.writer_train if split == "train" else data.writer_test
    parts = [get(int(k)) for k in writers]
    off = np.zeros(len(parts) + 1, np.int64)
    off[1:] = np.cumsum([len(lb) for _, lb in parts])
    if not parts:
        return np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.int64), off
    return (np.ascontiguousarray(np.concatenate([p for p, _ in parts])),
            np.concatenate([lb for _, lb in parts]).astype(np.int64), off)
