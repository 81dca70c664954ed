"""JSON Lines files (`metrics.jsonl`): the one reader and writer of the sweeper.

Rows are appended one line at a time and fsynced, so a crash can cut the LAST line short
(and only that one). `read_jsonl` drops such a line with a `TruncatedLineWarning` naming
the file, so that a resume or a report goes on from the rows that were written whole; a
bad line anywhere else means the file was damaged some other way and is a `JsonlError`
(exit 2), never silently skipped.

The file is read back like every file (fl_core.safeio): at most MAX_BYTES, each line
strict UTF-8 JSON nested at most a few levels, and each row validated against its schema
(by default a metrics row: an integer `round` and numbers or null for the metrics), so a
string or an object where a number belongs is an error naming the line and the key, not a
traceback deep inside a report. A complete line that is too deep or of the wrong shape is
never taken for a cut-short one.
"""

from __future__ import annotations

import functools
import json
import os
import warnings
from pathlib import Path
from typing import IO, Any, Iterable

from fl_core import safeio
from sweeper.errors import SweeperError
from sweeper.storage import atomic_write_text

MAX_BYTES = 256 << 20  # ~1 KB per evaluated round: 250,000 rounds
MAX_DEPTH = 8          # a metrics row nests 1 level
METRICS_SHAPE = ("one JSON object per line: `round` (an integer >= 0) and metrics (numbers "
                 "or null), as `fl-sweep simulate` writes them")


class JsonlError(SweeperError):
    """A JSON Lines file has a bad line before its last one, or a row of the wrong shape."""


class TruncatedLineWarning(UserWarning):
    """The last line of a JSON Lines file was cut short (a crash mid-write) and is dropped."""


@functools.cache
def metrics_row() -> type:
    """The schema of a metrics row (built on first use: pydantic stays out of CLI start-up)."""
    from pydantic import BaseModel, ConfigDict, Field

    class MetricsRow(BaseModel):
        model_config = ConfigDict(strict=True, extra="allow")
        # metric values may be NaN/inf (a diverged loss); a bool or a string is no metric
        __pydantic_extra__: dict[str, float | None] = Field(init=False)

        round: int = Field(ge=0, le=10**9)

    return MetricsRow


def _error(file: str, problem: str) -> JsonlError:
    return JsonlError(f"{file}: {problem}")


def read_jsonl(path: str | os.PathLike, schema: Any = None,
               expected: str = "one JSON object per line") -> list[dict[str, Any]]:
    """The rows of `path` ([] when it does not exist); see the module docstring.

    Args:
        schema: what each row must be (a pydantic model or type); None: a metrics row.
        expected: the shape in words, for error messages (with a `schema`).
    """
    path = Path(path)
    if schema is None:
        schema, expected = metrics_row(), METRICS_SHAPE
    try:
        data = safeio.read_bytes(path, max_bytes=MAX_BYTES, error=_error, what="a metrics.jsonl")
    except FileNotFoundError:
        return []
    lines = [(i, raw) for i, raw in enumerate(data.split(b"\n"), 1) if raw.strip()]
    rows = []
    for pos, (lineno, raw) in enumerate(lines):
        try:
            row = safeio.loads(raw, max_depth=MAX_DEPTH)
        except safeio.SyntaxProblem as e:
            if pos == len(lines) - 1:
                warnings.warn(TruncatedLineWarning(
                    f"{path}: dropped its last line {lineno}, cut short ({len(raw)} bytes, not "
                    "JSON): the run that wrote it stopped mid-write"), stacklevel=2)
                break
            raise JsonlError(
                f"{path}: line {lineno} is not a JSON object ({e.problem}); the file is damaged "
                "(only a cut-short last line is dropped automatically)") from None
        except safeio.ParseError as e:
            raise JsonlError(f"{path}: line {lineno}: {e.problem}; expected {expected}") from None
        safeio.validate(row, schema, f"{path}: line {lineno}", expected=expected, error=_error)
        rows.append(row)
    return rows


def line(row: dict[str, Any]) -> str:
    """One row as one line (keys in the row's order: `round` first in metrics)."""
    return json.dumps(row) + "\n"


def jsonl_text(rows: Iterable[dict[str, Any]]) -> str:
    return "".join(line(r) for r in rows)


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> None:
    """Replace `path` with `rows`, atomically."""
    atomic_write_text(Path(path), jsonl_text(rows))


def append_row(f: IO[bytes], row: dict[str, Any]) -> None:
    """Append one row to a file opened for appending unbuffered (`open(p, "ab",
    buffering=0)`) and make it durable before the caller goes on. Unbuffered: a failed
    write (a full disk) raises here, at once, instead of leaving bytes that fail again when
    the file is closed; a short write leaves a cut last line, which `read_jsonl` drops."""
    data = memoryview(line(row).encode("utf-8"))
    while data:
        data = data[f.write(data):]
    os.fsync(f.fileno())