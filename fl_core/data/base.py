"""The one interface every data source returns: writer-partitioned train/test digits.

Pixels are kept as uint8 (LEAF/TFF values are exactly k/255, so nothing is lost) in
contiguous numpy arrays with per-writer offsets: one block per split that Ray can
share zero-copy between actors, and that fits on a GPU even for all 3,383 writers.
Writer k's train images are `train_pixels[train_offsets[k]:train_offsets[k+1]]`.
Writers are sorted by id; `k` (the writer's index in that order) is the stable
client index every random stream is keyed by. `FederatedData` is the eager
`fl_core.data.population.WriterPopulation`; lazy sources make writers on demand instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True, eq=False)
class FederatedData:
    """Writer-partitioned digits.

    Attributes:
        writer_ids: sorted writer ids, length K.
        train_pixels: uint8 (N, 28, 28), background 255 (paper white), ink 0.
        train_labels: int64 (N,) digits 0..9.
        train_offsets: int64 (K + 1,) writer k owns rows offsets[k]:offsets[k+1].
        test_pixels, test_labels, test_offsets: the same for the test split (a writer
            may own no test rows).
        name: human-readable provenance (source and path).
    """

    writer_ids: tuple[str, ...]
    train_pixels: np.ndarray
    train_labels: np.ndarray
    train_offsets: np.ndarray
    test_pixels: np.ndarray
    test_labels: np.ndarray
    test_offsets: np.ndarray
    name: str = ""

    lazy = False  # every writer is in memory (fl_core.data.population.WriterPopulation)

    @property
    def num_writers(self) -> int:
        return len(self.writer_ids)

    def train_counts(self) -> np.ndarray:
        """n_k of every writer, int64 (K,)."""
        return np.diff(self.train_offsets)

    def writer_train(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        s = self.train_slice(k)
        return self.train_pixels[s], self.train_labels[s]

    def writer_test(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        s = self.test_slice(k)
        return self.test_pixels[s], self.test_labels[s]

    def writer_train_labels(self, k: int) -> np.ndarray:
        return self.train_labels[self.train_slice(k)]

    def train_slice(self, k: int) -> slice:
        return slice(int(self.train_offsets[k]), int(self.train_offsets[k + 1]))

    def test_slice(self, k: int) -> slice:
        return slice(int(self.test_offsets[k]), int(self.test_offsets[k + 1]))

    def num_train(self, k: int) -> int:
        """n_k: writer k's number of train examples (FedAvg weight)."""
        return int(self.train_offsets[k + 1] - self.train_offsets[k])

    def validate(self) -> None:
        """Internal invariants every source must satisfy."""
        for split in ("train", "test"):
            px = getattr(self, f"{split}_pixels")
            lb = getattr(self, f"{split}_labels")
            off = getattr(self, f"{split}_offsets")
            assert px.dtype == np.uint8 and px.ndim == 3 and px.shape[1:] == (28, 28), split
            assert lb.dtype == np.int64 and lb.shape == (px.shape[0],), split
            assert off.dtype == np.int64 and off.shape == (self.num_writers + 1,), split
            assert off[0] == 0 and off[-1] == px.shape[0] and np.all(np.diff(off) >= 0), split
        assert list(self.writer_ids) == sorted(self.writer_ids)


def from_writer_arrays(
    train: dict[str, tuple[np.ndarray, np.ndarray]],
    test: dict[str, tuple[np.ndarray, np.ndarray]],
    name: str = "",
) -> FederatedData:
    """Pack per-writer (pixels uint8 (n,28,28), labels int (n,)) into a FederatedData.

    Writers come out sorted by id; a writer present only in `test` gets no train rows
    and is dropped (it could never be a client).
    """
    ids = tuple(sorted(w for w in train if len(train[w][1]) > 0))

    def pack(parts: dict[str, tuple[np.ndarray, np.ndarray]]):
        px = [parts[w][0] if w in parts else np.zeros((0, 28, 28), np.uint8) for w in ids]
        lb = [parts[w][1] if w in parts else np.zeros((0,), np.int64) for w in ids]
        off = np.zeros(len(ids) + 1, np.int64)
        off[1:] = np.cumsum([len(x) for x in lb])
        pixels = np.ascontiguousarray(np.concatenate(px) if px else np.zeros((0, 28, 28), np.uint8))
        labels = np.concatenate(lb).astype(np.int64) if lb else np.zeros((0,), np.int64)
        return pixels.astype(np.uint8, copy=False), labels, off

    trp, trl, tro = pack(train)
    tep, tel, teo = pack(test)
    data = FederatedData(ids, trp, trl, tro, tep, tel, teo, name)
    data.validate()
    return data


def float_pixels_to_uint8(pixels: np.ndarray) -> np.ndarray:
    """TFF/LEAF float32 pixels (exactly k/255) → uint8 k."""
    return np.clip(np.rint(np.asarray(pixels, np.float64) * 255.0), 0, 255).astype(np.uint8)


def labels_only(
    writer_ids: tuple[str, ...],
    train_labels: np.ndarray,
    train_offsets: np.ndarray,
    test_labels: np.ndarray,
    test_offsets: np.ndarray,
    name: str = "",
) -> FederatedData:
    """A FederatedData of labels alone: its pixel arrays are read-only zero-stride views of
    one blank image (no memory, nothing read from disk). For checks that read writers and
    labels only (the backdoor targets, the attacker pool), never for training."""
    blank = np.zeros((1, 28, 28), np.uint8)
    data = FederatedData(
        tuple(writer_ids),
        np.broadcast_to(blank, (len(train_labels), 28, 28)),
        np.asarray(train_labels, np.int64), np.asarray(train_offsets, np.int64),
        np.broadcast_to(blank, (len(test_labels), 28, 28)),
        np.asarray(test_labels, np.int64), np.asarray(test_offsets, np.int64),
        name,
    )
    data.validate()
    return data


def at_least_suffix(m: int) -> str:
    """What `data.min_examples` adds to a population's name (load and describe agree)."""
    return f" (writers with ≥ {m} train images)"


def lazy_refusal(name: str, m: int):
    """The ConfigError for `data.min_examples` on a lazy population: only an eager one drops
    writers (a lazy one would need an index over its K writers in every process)."""
    from fl_core.errors import ConfigError

    return ConfigError("data.min_examples", m, f"0 for {name}: its population is lazy (writers made on "
                       "demand) and only an eager one drops writers; lower data.num_writers or "
                       "data.max_writers to an eager size, or set data.min_examples: 0")


def writers_with_at_least(data: FederatedData, m: int) -> FederatedData:
    """The writers owning at least `m` train images (`data.min_examples`), in their sorted
    order, with recomputed offsets; the arrays are copied (the dropped writers' memory is
    freed), and a labels-only view (`labels_only`) stays one.

    Raises:
        ConfigError: no writer has `m` train images.
    """
    counts = data.train_counts()
    keep = counts >= m
    if keep.all():
        return data
    if not keep.any():
        from fl_core.errors import ConfigError

        raise ConfigError("data.min_examples", m, f"at most {int(counts.max()) if len(counts) else 0}, the "
                          f"largest writer's train images in {data.name or 'the data'} (none would be left)")
    ids = tuple(w for w, k in zip(data.writer_ids, keep) if k)
    name = data.name + at_least_suffix(m)

    def rows(offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = np.diff(offsets)
        off = np.zeros(len(ids) + 1, np.int64)
        off[1:] = np.cumsum(n[keep])
        return np.repeat(keep, n), off  # row mask: the row's writer is kept

    tr_mask, tr_off = rows(data.train_offsets)
    te_mask, te_off = rows(data.test_offsets)
    if data.train_pixels.strides[0] == 0:  # labels only: the blank image stays a view
        return labels_only(ids, data.train_labels[tr_mask], tr_off, data.test_labels[te_mask], te_off, name)
    out = FederatedData(ids, data.train_pixels[tr_mask], data.train_labels[tr_mask], tr_off,
                        data.test_pixels[te_mask], data.test_labels[te_mask], te_off, name)
    out.validate()
    return out


@dataclass(frozen=True)
class DataSummary:
    """What a data source holds, read from its metadata: the h5 layout and label arrays,
    the synthetic config. No pixels are read and torch is not imported, so `fl-sweep
    validate` can check a grid against its data in a second (`fl_core.data.describe_data`).

    Attributes:
        name: provenance, as `load_data` names the data.
        num_writers: K after `data.max_writers` (writers without train images dropped, as
            `load_data` does); None when the source cannot tell without reading every
            example (LEAF JSON).
        num_train, num_test: images of those writers (None with num_writers).
        lazy: `load_data` returns a lazy population (writers made on demand).
        labels: the same writers' labels in `load_data`'s order (`labels_only`), for the
            population checks; None for a lazy population (its checks walk writers on
            demand) or when the labels cost more than a metadata read (large synthetic).
        train_counts, test_counts: every writer's train / test image count, int64 (K,), where
            the source gives them without `labels` (large eager synthetic); None otherwise
            (`labels` has them, or nothing does).
    """

    name: str
    num_writers: int | None
    num_train: int | None = None
    num_test: int | None = None
    lazy: bool = False
    labels: FederatedData | None = None
    train_counts: np.ndarray | None = field(default=None, compare=False)
    test_counts: np.ndarray | None = field(default=None, compare=False)

    def at_least(self, m: int) -> "DataSummary":
        """The summary of the writers with at least `m` train images (`data.min_examples`;
        0 keeps all), as `writers_with_at_least` leaves them.

        Raises:
            ConfigError: the population is lazy (it is refused there), or no writer is left.
        """
        if m <= 0:
            return self
        from fl_core.errors import ConfigError

        if self.lazy:
            raise lazy_refusal(self.name, m)
        if self.labels is not None:
            cut = writers_with_at_least(self.labels, m)
            return DataSummary(cut.name, cut.num_writers, len(cut.train_labels), len(cut.test_labels), False, cut)
        if self.train_counts is None or self.test_counts is None:  # K unknown (LEAF): the trial filters
            return DataSummary(self.name + at_least_suffix(m), None)
        keep = self.train_counts >= m
        if not keep.any():
            raise ConfigError("data.min_examples", m, f"at most {int(self.train_counts.max())}, the largest "
                              f"writer's train images in {self.name} (none would be left)")
        return DataSummary(self.name + at_least_suffix(m), int(keep.sum()), int(self.train_counts[keep].sum()),
                           int(self.test_counts[keep].sum()), False, None, self.train_counts[keep],
                           self.test_counts[keep])

    def first(self, n: int | None) -> "DataSummary":
        """The summary of the first `n` writers (`data.max_writers`; None keeps all)."""
        if n is None or self.num_writers is None or n >= self.num_writers:
            return self
        lab = self.labels
        if lab is None:
            if self.train_counts is not None and self.test_counts is not None:
                return DataSummary(self.name, n, int(self.train_counts[:n].sum()), int(self.test_counts[:n].sum()),
                                   self.lazy, None, self.train_counts[:n], self.test_counts[:n])
            return DataSummary(self.name, n, None, None, self.lazy, None)
        tr, te = int(lab.train_offsets[n]), int(lab.test_offsets[n])
        cut = labels_only(lab.writer_ids[:n], lab.train_labels[:tr], lab.train_offsets[: n + 1],
                          lab.test_labels[:te], lab.test_offsets[: n + 1], f"{lab.name} (first {n} writers)")
        return DataSummary(cut.name, n, tr, te, self.lazy, cut)
