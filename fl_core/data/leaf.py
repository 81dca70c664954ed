"""LEAF FEMNIST JSON directories → FederatedData (digits only).

LEAF (Caldas et al. 2018) writes `<path>/train/*.json` and `<path>/test/*.json`, each
`{"users", "num_samples", "user_data": {writer: {"x": [[784 floats]], "y": [int]}}}`
with labels 0..61 (digits, then upper- and lower-case letters). We keep labels 0..9.
Pixels are k/255 with background 1.0, the same convention as TFF (both come from LEAF's
preprocessing), so they are converted to uint8 without inversion. A writer may be
missing from test/ (it then owns no test rows); a writer split over several JSON files
of one split is concatenated in file-name order. test/ itself may be absent (a
train-only sample): the data then has no test rows, and `name` says so.

Each JSON file is read by the guarded reader (fl_core.safeio): at most MAX_BYTES, strict
UTF-8, nested at most MAX_DEPTH levels (checked before parsing: a 100,000-deep file is a
DatasetError, not a RecursionError), every writer's record validated strictly (a label
"3" or true, a pixel "0.5", a ragged image is named with its writer and position).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np

from fl_core import safeio
from fl_core.config import DataConfig
from fl_core.data.base import FederatedData, float_pixels_to_uint8, from_writer_arrays
from fl_core.errors import DatasetError

HOW_TO_PREPARE = (
    "point data.path at LEAF's femnist data directory (the one holding train/ and test/, "
    "written by LEAF's `preprocess.sh`), or use data.source=tff-h5 / embedded"
)
MAX_BYTES = 1 << 30  # LEAF's FEMNIST files are ~100-300 MB each
MAX_DEPTH = 16       # user_data -> writer -> x -> image: 5 levels
SHAPE = ('a LEAF FEMNIST JSON file ({"user_data": {writer: {"x": [[784 pixels in [0, 1]], ...], '
         '"y": [integer labels]}}})')

Parts = dict[str, list[tuple[np.ndarray, np.ndarray]]]


def _error(file: str, problem: str) -> DatasetError:
    return DatasetError(file, problem, HOW_TO_PREPARE)


@functools.cache
def _schemas() -> tuple[Any, Any]:
    """(file, writer) schemas: the file's top level, then each writer on its own (so that
    a validated copy of one writer's pixels, not of the whole file, exists at a time)."""
    from typing import Annotated

    from pydantic import BaseModel, ConfigDict, Field

    class LeafFile(BaseModel):
        model_config = ConfigDict(strict=True, extra="allow")
        user_data: dict[Annotated[str, Field(min_length=1, max_length=256)], dict[str, Any]]

    class Writer(BaseModel):
        model_config = ConfigDict(strict=True, extra="allow", allow_inf_nan=False)
        x: list[list[float]]
        y: list[Annotated[int, Field(ge=0, le=61)]]  # FEMNIST: 10 digits, 52 letters

    return LeafFile, Writer


def _read_file(path: Path) -> Any:
    """One LEAF JSON file, bounded and its top level validated (writers are checked one
    at a time by the caller)."""
    try:
        return safeio.read_json(path, _schemas()[0], max_bytes=MAX_BYTES, max_depth=MAX_DEPTH,
                                expected=SHAPE, error=_error, what="a LEAF JSON file")
    except FileNotFoundError:  # listed a moment ago, gone now
        raise _error(str(path), "no such file") from None


def _read_json(path: Path, parts: Parts) -> None:
    """Append each writer's digits in `path` to `parts`."""
    _, writer_schema = _schemas()
    file = str(path)
    for w, d in _read_file(path).user_data.items():
        wd = safeio.validate(d, writer_schema, file, expected=SHAPE, error=_error,
                             where=f"user_data.{w}")
        y = np.asarray(wd.y, np.int64)
        if len(wd.x) != len(y):
            raise _error(file, f"writer {w!r}: {len(wd.x)} images but {y.size} labels; expected {SHAPE}")
        digits = (y >= 0) & (y < 10)
        if not digits.any():
            continue
        rows = [row for row, keep in zip(wd.x, digits) if keep]
        if any(len(row) != 784 for row in rows):
            bad = next(i for i, row in enumerate(rows) if len(row) != 784)
            raise _error(file, f"writer {w!r}: a digit image has {len(rows[bad])} pixels; expected {SHAPE}")
        x = np.asarray(rows, np.float64)
        if x.min() < 0.0 or x.max() > 1.0:
            raise _error(file, f"writer {w!r}: pixel values outside [0, 1]; expected {SHAPE}")
        parts.setdefault(w, []).append((float_pixels_to_uint8(x).reshape(-1, 28, 28), y[digits]))


def _read_split(directory: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    parts: Parts = {}
    for path in sorted(directory.glob("*.json")):
        _read_json(path, parts)
    return {
        w: (np.concatenate([p for p, _ in ps]), np.concatenate([y for _, y in ps]))
        for w, ps in parts.items()
    }


def read_leaf_dir(directory: Path) -> FederatedData:
    """Load `<directory>/train/*.json` (required) and `<directory>/test/*.json` (optional)."""
    directory = Path(directory).expanduser()
    train_dir, test_dir = directory / "train", directory / "test"
    if not train_dir.is_dir() or not any(train_dir.glob("*.json")):
        raise DatasetError(str(directory), "no train/*.json", HOW_TO_PREPARE)
    train = _read_split(train_dir)
    if not train:
        raise DatasetError(str(train_dir), "no digit samples (labels 0..9) in any JSON file", HOW_TO_PREPARE)
    has_test = test_dir.is_dir()
    test = _read_split(test_dir) if has_test else {}
    return from_writer_arrays(train, test, f"leaf:{directory}" + ("" if has_test else " (no test/)"))


def train_users(directory: Path) -> set[str]:
    """The writer ids of `<directory>/train/*.json` (their `user_data` keys), each file read
    by the guarded reader: for counting the population (K) without building the data, as
    the report's privacy accounting does. DatasetError names a damaged file."""
    users: set[str] = set()
    for path in sorted((Path(directory).expanduser() / "train").glob("*.json")):
        users.update(_read_file(path).user_data)
    return users


def load(cfg: DataConfig, seed: int) -> FederatedData:
    """Registry entry: `data.source=leaf`, `data.path=DIR` (the seed is unused)."""
    if not cfg.path:
        raise DatasetError("data.path", "not set", HOW_TO_PREPARE)
    return read_leaf_dir(Path(cfg.path))
