"""LEAF FEMNIST JSON directories → FederatedData (digits only).

LEAF (Caldas et al. 2018) writes `<path>/train/*.json` and `<path>/test/*.json`, each
`{"users", "num_samples", "user_data": {writer: {"x": [[784 floats]], "y": [int]}}}`
with labels 0..61 (digits, then upper- and lower-case letters). We keep labels 0..9.
Pixels are k/255 with background 1.0, the same convention as TFF (both come from LEAF's
preprocessing), so they are converted to uint8 without inversion. A writer may be
missing from test/ (it then owns no test rows); a writer split over several JSON files
of one split is concatenated in file-name order. test/ itself may be absent (a
train-only sample): the data then has no test rows, and `name` says so.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fl_core.config import DataConfig
from fl_core.data.base import FederatedData, float_pixels_to_uint8, from_writer_arrays
from fl_core.errors import DatasetError

HOW_TO_PREPARE = (
    "point data.path at LEAF's femnist data directory (the one holding train/ and test/, "
    "written by LEAF's `preprocess.sh`), or use data.source=tff-h5 / embedded"
)

Parts = dict[str, list[tuple[np.ndarray, np.ndarray]]]


def _read_json(path: Path, parts: Parts) -> None:
    """Append each writer's digits in `path` to `parts`."""
    try:
        with open(path, "rb") as fh:
            blob = json.load(fh)
        user_data = blob["user_data"]
        for w, d in user_data.items():
            y = np.asarray(d["y"], np.int64)
            if y.ndim != 1 or len(d["x"]) != len(y):
                raise ValueError(f"writer {w!r}: {len(d['x'])} images but {y.size} labels")
            digits = (y >= 0) & (y < 10)
            if not digits.any():
                continue
            x = np.asarray([row for row, keep in zip(d["x"], digits) if keep], np.float64)
            if x.shape != (int(digits.sum()), 784):
                raise ValueError(f"writer {w!r}: digit images have shape {x.shape}, expected (n, 784)")
            if x.min() < 0.0 or x.max() > 1.0:
                raise ValueError(f"writer {w!r}: pixel values outside [0, 1]")
            parts.setdefault(w, []).append((float_pixels_to_uint8(x).reshape(-1, 28, 28), y[digits]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        what = f"not a LEAF FEMNIST JSON file ({type(e).__name__}: {e})"
        raise DatasetError(str(path), what, HOW_TO_PREPARE) from None


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


def load(cfg: DataConfig, seed: int) -> FederatedData:
    """Registry entry: `data.source=leaf`, `data.path=DIR` (the seed is unused)."""
    if not cfg.path:
        raise DatasetError("data.path", "not set", HOW_TO_PREPARE)
    return read_leaf_dir(Path(cfg.path))
