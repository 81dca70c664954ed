"""JSON Lines files (`metrics.jsonl`): the one reader and writer of the sweeper.

Rows are appended one line at a time and fsynced, so a crash can cut the LAST line short
(and only that one). `read_jsonl` drops such a line with a `TruncatedLineWarning` naming
the file, so that a resume or a report goes on from the rows that were written whole; a
bad line anywhere else means the file was damaged some other way and is a `JsonlError`
(exit 2), never silently skipped.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import IO, Any, Iterable

from sweeper.errors import SweeperError
from sweeper.storage import atomic_write_text


class JsonlError(SweeperError):
    """A JSON Lines file has a bad line before its last one."""


class TruncatedLineWarning(UserWarning):
    """The last line of a JSON Lines file was cut short (a crash mid-write) and is dropped."""


def _row(raw: bytes) -> dict[str, Any]:
    row = json.loads(raw.decode("utf-8"))
    if not isinstance(row, dict):
        raise ValueError("not a JSON object")
    return row


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of `path` ([] when it does not exist); see the module docstring."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as e:
        raise JsonlError(f"{path}: cannot read: {e.strerror or e}") from None
    lines = [(i, raw) for i, raw in enumerate(data.split(b"\n"), 1) if raw.strip()]
    rows = []
    for pos, (lineno, raw) in enumerate(lines):
        try:
            rows.append(_row(raw))
        except ValueError:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            if pos == len(lines) - 1:
                warnings.warn(TruncatedLineWarning(
                    f"{path}: dropped its last line {lineno}, cut short ({len(raw)} bytes, not "
                    "JSON): the run that wrote it stopped mid-write"), stacklevel=2)
                break
            raise JsonlError(
                f"{path}: line {lineno} is not a JSON object; the file is damaged (only a cut-short "
                "last line is dropped automatically)") from None
    return rows


def line(row: dict[str, Any]) -> str:
    """One row as one line (keys in the row's order: `round` first in metrics)."""
    return json.dumps(row) + "\n"


def jsonl_text(rows: Iterable[dict[str, Any]]) -> str:
    return "".join(line(r) for r in rows)


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> None:
    """Replace `path` with `rows`, atomically."""
    atomic_write_text(Path(path), jsonl_text(rows))


def append_row(f: IO[str], row: dict[str, Any]) -> None:
    """Append one row to an open file and make it durable before the caller goes on."""
    f.write(line(row))
    f.flush()
    os.fsync(f.fileno())
