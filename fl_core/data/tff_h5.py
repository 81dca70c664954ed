"""TensorFlow Federated's EMNIST h5 pair → FederatedData.

TFF publishes Federated EMNIST (Caldas et al. 2018, LEAF; used by Sun et al. 2019) as
`fed_emnist_digitsonly_{train,test}.h5` with one group per writer,
`examples/<writer>/{label int32 (N,), pixels float32 (N, 28, 28)}`, pixels exactly k/255
with background 1.0. We read each dataset exactly once into one preallocated uint8 block
per split (no per-pixel Python), so the full 3,383-writer files load in seconds. The
digits+letters pair (`fed_emnist_{train,test}.h5`) is read too, keeping labels 0..9 only.
uint8 pixel datasets (the embedded copy) are taken as they are. A damaged file (cut short,
a corrupt region: HDF5 then fails when the region is read, not when the file is opened)
is a DatasetError naming the file and the writer being read.

`TffH5Population` is the lazy alternative (`fl_core.data.population`): it reads only the
layout and the label arrays up front (n_k), and a writer's `pixels` group when that writer
is asked for, each process opening the files itself on first use. `load` picks it when the
pair is larger than LAZY_BYTES (no released EMNIST file is), so the real data keep today's
eager path; a caller may also build one directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from fl_core.config import DataConfig
from fl_core.data.base import DataSummary, FederatedData, float_pixels_to_uint8, labels_only
from fl_core.errors import DatasetError

# (train, test, keep only labels 0..9 instead of requiring them); first match wins.
FILE_PAIRS: tuple[tuple[str, str, bool], ...] = (
    ("fed_emnist_digitsonly_train.h5", "fed_emnist_digitsonly_test.h5", False),
    ("fed_emnist_train.h5", "fed_emnist_test.h5", True),
)

HOW_TO_PREPARE = (
    "run `fl-sweep data download` and pass the directory it prints as "
    "`--set data.path=DIR`, or use `--set data.source=embedded` for the bundled real writers"
)


@dataclass(frozen=True)
class Split:
    """One split as read from disk: writers in sorted order and their rows."""

    writer_ids: tuple[str, ...]
    pixels: np.ndarray | None  # uint8 (N, 28, 28); None: labels only (`read_label_split`)
    labels: np.ndarray   # int64 (N,)
    offsets: np.ndarray  # int64 (len(writer_ids) + 1,)


def find_pair(directory: Path) -> tuple[Path, Path, bool]:
    """The (train, test, filter_letters) files in `directory`, or a DatasetError."""
    if not directory.is_dir():
        raise DatasetError(str(directory), "directory does not exist", HOW_TO_PREPARE)
    for train_name, test_name, filter_letters in FILE_PAIRS:
        train, test = directory / train_name, directory / test_name
        if train.is_file():
            if not test.is_file():
                raise DatasetError(str(directory), f"{train_name} is there but {test_name} is missing", HOW_TO_PREPARE)
            return train, test, filter_letters
    wanted = " or ".join(f"{a} + {b}" for a, b, _ in FILE_PAIRS)
    raise DatasetError(str(directory), f"no h5 pair ({wanted})", HOW_TO_PREPARE)


def _writer_datasets(f: h5py.File, path: Path) -> list[tuple[str, h5py.Dataset, h5py.Dataset]]:
    """Check the layout and return (writer, label, pixels) sorted by writer id."""
    examples = f.get("examples")
    if not isinstance(examples, h5py.Group):
        raise DatasetError(str(path), "no `examples` group (expected examples/<writer>/{label,pixels})", HOW_TO_PREPARE)
    out = []
    for w in sorted(examples.keys()):
        g = examples[w]
        label = g.get("label") if isinstance(g, h5py.Group) else None
        pixels = g.get("pixels") if isinstance(g, h5py.Group) else None
        if not isinstance(label, h5py.Dataset) or not isinstance(pixels, h5py.Dataset):
            raise DatasetError(str(path), f"writer {w!r} lacks a `label` or `pixels` dataset", HOW_TO_PREPARE)
        n = label.shape[0] if label.ndim == 1 else -1
        if n < 0 or pixels.shape != (n, 28, 28) or label.dtype.kind not in "iu" or pixels.dtype.kind not in "fu":
            raise DatasetError(
                str(path),
                f"writer {w!r}: label {label.dtype}{label.shape} / pixels {pixels.dtype}{pixels.shape}, "
                "expected integer (N,) / float32 or uint8 (N, 28, 28)",
                HOW_TO_PREPARE,
            )
        out.append((w, label, pixels))
    return out


def _to_uint8(raw: np.ndarray, writer: str, path: Path) -> np.ndarray:
    if raw.dtype == np.uint8:
        return raw
    if raw.size and (float(raw.min()) < 0.0 or float(raw.max()) > 1.0):
        raise DatasetError(
            str(path), f"writer {writer!r}: pixel values outside [0, 1] (min {raw.min()}, max {raw.max()})",
            HOW_TO_PREPARE,
        )
    return float_pixels_to_uint8(raw)


def read_split(path: Path, filter_letters: bool = False) -> Split:
    """Read one TFF-layout h5 file (each dataset once) into contiguous uint8/int64 blocks.

    Args:
        path: the h5 file.
        filter_letters: keep only labels 0..9 (digits+letters files); otherwise a label
            outside 0..9 is a DatasetError.
    """
    return _with_file(path, filter_letters, _read_entries)


def read_label_split(path: Path, filter_letters: bool = False) -> Split:
    """`read_split` without the pixels: the layout, every dataset's shape and the label
    arrays (a few bytes per image), with the same checks and errors; `pixels` is None."""
    return _with_file(path, filter_letters, lambda f, p, fl: _read_entries(f, p, fl, pixels=False))


def _with_file(path: Path, filter_letters: bool, read) -> Split:
    """`read(f, path, filter_letters)` on the open file, h5py's errors as DatasetErrors."""
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DatasetError(str(path), f"not a readable HDF5 file ({e})", HOW_TO_PREPARE) from None
    with f:
        try:
            return read(f, path, filter_letters)
        except DatasetError:
            raise
        except (OSError, RuntimeError, KeyError, ValueError, TypeError) as e:
            # h5py raises OSError/RuntimeError/KeyError for unreadable chunks, heaps, B-trees
            reason = f"{type(e).__name__}: {e}".splitlines()[0][:300]
            raise DatasetError(str(path), f"damaged HDF5 file, a region cannot be read ({reason})",
                               HOW_TO_PREPARE) from None


def _read_entries(f: h5py.File, path: Path, filter_letters: bool, pixels: bool = True) -> Split:
    """`read_split` (or with `pixels=False` `read_label_split`) without the translation of
    h5py's errors."""
    entries = _writer_datasets(f, path)
    total = sum(lab.shape[0] for _, lab, _ in entries)
    block = np.empty((total, 28, 28), np.uint8) if pixels else None
    labels = np.empty((total,), np.int64)
    ids: list[str] = []
    counts: list[int] = []
    at = 0
    for w, lab_ds, px_ds in entries:
        lab = lab_ds[()].astype(np.int64)
        keep = (lab >= 0) & (lab < 10)
        if not filter_letters and not keep.all():
            bad = sorted(set(lab[~keep].tolist()))[:5]
            raise DatasetError(str(path), f"writer {w!r}: labels outside 0..9 ({bad})", HOW_TO_PREPARE)
        if filter_letters:
            lab = lab[keep]
        n = len(lab)
        if block is not None:
            px = _to_uint8(px_ds[()], w, path)
            block[at : at + n] = px[keep] if filter_letters else px
        labels[at : at + n] = lab
        at += n
        ids.append(w)
        counts.append(n)
    offsets = np.zeros(len(ids) + 1, np.int64)
    offsets[1:] = np.cumsum(counts)
    # A digits+letters file shrinks when filtered: drop the unused tail.
    return Split(tuple(ids), None if block is None else block[:at], labels[:at], offsets)


def _check_convention(split: Split, path: Path) -> None:
    """TFF/LEAF background is white (255); an MNIST-style file (background 0) would
    silently train on inverted images, so refuse it."""
    if len(split.labels) == 0:
        return
    border = np.concatenate([split.pixels[:, 0, :], split.pixels[:, -1, :]], axis=1)
    if float(border.mean()) < 64.0:
        raise DatasetError(
            str(path), f"image borders average {border.mean():.1f}/255: background looks black, "
            "expected the TFF convention (background 1.0 = white, ink 0.0)", HOW_TO_PREPARE,
        )


def _gather(split: Split, order: list[int | None]) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """Rows of `split`'s writers in `order` (None: a writer with no rows) and their offsets
    (pixels None for a labels-only split)."""
    counts = [0 if k is None else int(split.offsets[k + 1] - split.offsets[k]) for k in order]
    offsets = np.zeros(len(order) + 1, np.int64)
    offsets[1:] = np.cumsum(counts)
    parts = [np.arange(split.offsets[k], split.offsets[k + 1]) for k in order if k is not None]
    idx = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    if len(idx) == len(split.labels) and np.array_equal(idx, np.arange(len(idx))):
        return split.pixels, split.labels, offsets  # already in order: no copy
    return None if split.pixels is None else split.pixels[idx], split.labels[idx], offsets


def align(train: Split, test: Split, name: str) -> FederatedData:
    """Combine two splits keyed by the train writers (sorted). Writers without train rows
    are dropped (they could never be a client); test rows follow the train order. Two
    labels-only splits give a labels-only FederatedData (`base.labels_only`)."""
    keep = [k for k in range(len(train.writer_ids)) if train.offsets[k + 1] > train.offsets[k]]
    ids = tuple(train.writer_ids[k] for k in keep)
    test_pos = {w: j for j, w in enumerate(test.writer_ids)}
    trp, trl, tro = _gather(train, keep)
    tep, tel, teo = _gather(test, [test_pos.get(w) for w in ids])
    if trp is None or tep is None:
        return labels_only(ids, trl, tro, tel, teo, name)
    data = FederatedData(ids, trp, trl, tro, tep, tel, teo, name)
    data.validate()
    return data


def read_tff_dir(directory: Path, name: str | None = None) -> FederatedData:
    """Load the h5 pair in `directory` (see `FILE_PAIRS`)."""
    directory = Path(directory).expanduser()
    train_path, test_path, filter_letters = find_pair(directory)
    train = read_split(train_path, filter_letters)
    test = read_split(test_path, filter_letters)
    if len(train.labels) == 0:
        raise DatasetError(str(train_path), "no training images", HOW_TO_PREPARE)
    _check_convention(train, train_path)
    _check_convention(test, test_path)
    return align(train, test, name or f"tff-h5:{directory}")


LAZY_BYTES = 8 * 2**30  # `load` reads writers on demand above this size of the pair


class TffH5Population:
    """The writers of a TFF h5 pair, each read from disk when asked (module docstring).

    Same writers, order, labels and pixels as `read_tff_dir` (writers without train
    images dropped, digits+letters files filtered to 0..9). Up front: the file layout and
    every writer's labels (for n_k and the target search). Pickles as the directory, so
    a Ray actor opens the files itself."""

    lazy = True

    def __init__(self, directory: str | Path, name: str | None = None):
        self.directory = Path(directory).expanduser()
        self.name = name or f"tff-h5:{self.directory}"
        self._paths = find_pair(self.directory)
        self._files: dict[int, h5py.File] = {}
        train, test = self._index(0), self._index(1)
        keep = [i for i, lab in enumerate(train[1]) if len(lab)]
        self.writer_ids = tuple(train[0][i] for i in keep)
        self._labels = [[train[1][i] for i in keep], []]
        pos = {w: j for j, w in enumerate(test[0])}
        self._labels[1] = [test[1][pos[w]] if w in pos else np.zeros(0, np.int64) for w in self.writer_ids]
        self._test_name = [test[0][pos[w]] if w in pos else None for w in self.writer_ids]
        self._counts = np.asarray([len(x) for x in self._labels[0]], np.int64)
        if not len(self._counts):
            raise DatasetError(str(self._paths[0]), "no training images", HOW_TO_PREPARE)
        # the background check of the eager path, on the first writer only (reading all is
        # what this class avoids)
        px, lb = self.writer_train(0)
        _check_convention(Split(self.writer_ids[:1], px, lb, np.asarray([0, len(lb)], np.int64)), self._paths[0])

    def __reduce__(self):
        return (TffH5Population, (str(self.directory), self.name))

    def _file(self, split: int) -> h5py.File:
        f = self._files.get(split)
        if f is None:
            path = self._paths[split]
            try:
                f = self._files[split] = h5py.File(path, "r")
            except OSError as e:
                raise DatasetError(str(path), f"not a readable HDF5 file ({e})", HOW_TO_PREPARE) from None
        return f

    def _index(self, split: int) -> tuple[list[str], list[np.ndarray]]:
        """(sorted writer ids, their labels, filtered like `_read_entries`)."""
        path, filter_letters = self._paths[split], self._paths[2]
        ids, labels = [], []
        for w, lab_ds, _ in _writer_datasets(self._file(split), path):
            lab = lab_ds[()].astype(np.int64)
            keep = (lab >= 0) & (lab < 10)
            if not filter_letters and not keep.all():
                raise DatasetError(str(path), f"writer {w!r}: labels outside 0..9", HOW_TO_PREPARE)
            ids.append(w)
            labels.append(lab[keep] if filter_letters else lab)
        return ids, labels

    @property
    def num_writers(self) -> int:
        return len(self.writer_ids)

    def train_counts(self) -> np.ndarray:
        return self._counts

    def writer_train_labels(self, k: int) -> np.ndarray:
        return self._labels[0][k]

    def writer_train(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self._read(0, int(k), self.writer_ids[k])

    def writer_test(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        w = self._test_name[k]
        if w is None:
            return np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.int64)
        return self._read(1, int(k), w)

    def _read(self, split: int, k: int, writer: str) -> tuple[np.ndarray, np.ndarray]:
        path = self._paths[split]
        g = self._file(split)["examples"][writer]
        raw_labels = g["label"][()].astype(np.int64)
        px = _to_uint8(g["pixels"][()], writer, path)
        if self._paths[2]:
            px = px[(raw_labels >= 0) & (raw_labels < 10)]
        return np.ascontiguousarray(px), self._labels[split][k]


def describe_dir(directory: Path, name: str, lazy: bool = False) -> DataSummary:
    """The pair in `directory` from its metadata (`read_label_split`): K, the image counts
    and the labels in `read_tff_dir`'s order; raises the same DatasetErrors for a missing
    directory, a missing file, a broken layout or labels outside 0..9."""
    train_path, test_path, filter_letters = find_pair(directory)
    train = read_label_split(train_path, filter_letters)
    if len(train.labels) == 0:
        raise DatasetError(str(train_path), "no training images", HOW_TO_PREPARE)
    view = align(train, read_label_split(test_path, filter_letters), name)
    return DataSummary(name, view.num_writers, len(view.train_labels), len(view.test_labels), lazy,
                       None if lazy else view)


def describe(cfg: DataConfig, seed: int) -> DataSummary:
    """Registry entry of `fl_core.data.describe_data` for `data.source=tff-h5`."""
    if not cfg.path:
        raise DatasetError("data.path", "not set", HOW_TO_PREPARE)
    directory = Path(cfg.path).expanduser()
    train, test, _ = find_pair(directory)
    lazy = train.stat().st_size + test.stat().st_size > LAZY_BYTES
    return describe_dir(directory, f"tff-h5:{directory}", lazy)


def load(cfg: DataConfig, seed: int) -> FederatedData | TffH5Population:
    """Registry entry: `data.source=tff-h5`, `data.path=DIR` (the seed is unused). A pair
    larger than LAZY_BYTES is read writer by writer (`TffH5Population`)."""
    if not cfg.path:
        raise DatasetError("data.path", "not set", HOW_TO_PREPARE)
    directory = Path(cfg.path).expanduser()
    train, test, _ = find_pair(directory)
    if train.stat().st_size + test.stat().st_size > LAZY_BYTES:
        return TffH5Population(directory)
    return read_tff_dir(directory)
