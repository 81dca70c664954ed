"""The real writers shipped inside the package: the default data source, works offline.

All 439 writers of ../shared/data/femnist_digits (LEAF's sample of the NIST SD19 writers
behind TFF's Federated EMNIST; 27,443 train / 3,070 test digits) stored in TFF's
`examples/<writer>/{label,pixels}` layout with uint8 pixels (lossless: the source values
are exactly k/255). See `embedded/PROVENANCE.md`; `embedded/build_embedded.py` rebuilds
the files byte for byte. Their sha256 is recorded here so a truncated or corrupted
install fails with a DatasetError instead of training on garbage.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from fl_core.config import DataConfig
from fl_core.data.base import DataSummary, FederatedData
from fl_core.data.tff_h5 import align, read_label_split, read_split
from fl_core.errors import DatasetError

EMBEDDED_DIR = Path(__file__).resolve().parent / "embedded"
EMBEDDED_FILES = ("femnist_digits_train.h5", "femnist_digits_test.h5")
SHA256 = {
    "femnist_digits_train.h5": "418b61b636c1c8ae4b08663ad0125ddd946421374e6589e4700799f8fc24aef6",
    "femnist_digits_test.h5": "fcd0a309f20970a717f36997a03b75d81d0173959093eb00bd4f41d96739a8d1",
}
HOW_TO_FIX = (
    "reinstall fl-backdoor, or rebuild from a checkout with "
    "`python fl_core/data/embedded/build_embedded.py`"
)


def verify(directory: Path = EMBEDDED_DIR) -> None:
    """Raise DatasetError unless both files exist and match the recorded sha256."""
    for name in EMBEDDED_FILES:
        path = directory / name
        if not path.is_file():
            raise DatasetError(str(path), "the embedded data file is missing", HOW_TO_FIX)
        actual = hashlib.sha256(path.read_bytes()).hexdigest()
        if actual != SHA256[name]:
            raise DatasetError(
                str(path), f"sha256 {actual} does not match the recorded {SHA256[name]} (corrupted file)", HOW_TO_FIX
            )


def read_embedded(directory: Path = EMBEDDED_DIR, pixels: bool = True) -> FederatedData:
    """Verify, then read the embedded pair (without `pixels`: its labels only)."""
    verify(directory)
    read = read_split if pixels else read_label_split
    train = read(directory / EMBEDDED_FILES[0])
    test = read(directory / EMBEDDED_FILES[1])
    return align(train, test, f"embedded:{len(train.writer_ids)} LEAF/NIST writers")


def describe(cfg: DataConfig, seed: int) -> DataSummary:
    """Registry entry of `fl_core.data.describe_data` for `data.source=embedded`: the
    verified files' layout and labels, no pixels."""
    view = read_embedded(pixels=False)
    return DataSummary(view.name, view.num_writers, len(view.train_labels), len(view.test_labels), False, view)


def load(cfg: DataConfig, seed: int) -> FederatedData:
    """Registry entry: `data.source=embedded` (path and seed unused)."""
    return read_embedded()
