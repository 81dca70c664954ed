"""The one guarded reader of files the tool reads back (LEAF JSON, sweep.json, driver.json,
status.json, metrics.jsonl lines, ...).

A file on disk is untrusted input, even one the tool wrote: it may have been cut short,
edited, damaged, or sent by someone else (an exported run). Before any code looks at the
data, this reader bounds what it costs and checks what it is:

- a regular file (a FIFO would block, a directory or device is not a file) of at most
  `max_bytes` bytes, read without reading further;
- strict UTF-8;
- JSON nested at most `max_depth` levels, measured on the text *before* parsing (CPython's
  parser recurses: a 100,000-deep array ends in a RecursionError), and each object key at
  most once (json keeps the last one silently);
- its shape validated against a schema (pydantic, strict: no "1" for 1, no true for 1).

Every failure is one exception built by the caller's `error(file, problem)` factory, so
that fl_core raises its FLCoreError subclasses and the sweeper its SweeperError ones (the
CLI prints one line and exits 2); the default is `UntrustedFileError`. YAML is read by
`sweeper.yamlio` (yaml stays out of fl_core). Stdlib only at import: pydantic is imported
when a schema is first checked, so the sweeper's CLI starts without it.
"""

from __future__ import annotations

import functools
import json
import os
import re
import reprlib
import stat
from typing import Any, Callable

from fl_core.errors import FLCoreError

MAX_DEPTH = 64  # the tool's files nest 2 (metrics rows) to 5 (LEAF) levels
SHORT_CHARS = 200


class UntrustedFileError(FLCoreError):
    """A file read back is missing its shape: unreadable, too big, not UTF-8, not JSON,
    too deep or not what its schema says. Names the file and the problem."""

    def __init__(self, path: str, problem: str):
        self.path, self.problem = path, problem
        super().__init__(f"{path}: {problem}")



ErrorFactory = Callable[[str, str], Exception]


class ParseError(ValueError):
    """Text that is not the JSON it should be; `problem` says why (no file name)."""

    def __init__(self, problem: str):
        self.problem = problem
        super().__init__(problem)


class SyntaxProblem(ParseError):
    """Not UTF-8 or not JSON: what a file cut short mid-write also looks like."""


class BoundProblem(ParseError):
    """Valid-looking text past a bound (depth) or with a repeated key: never a cut."""


# --------------------------------------------------------------------------- messages
_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = 60
_repr.maxlist = _repr.maxtuple = _repr.maxset = _repr.maxdict = 6
_repr.maxlevel = 2


def short(value: Any) -> str:
    """A repr of `value` capped to about a line (for error messages)."""
    r = _repr.repr(value)
    return r if len(r) <= SHORT_CHARS else r[: SHORT_CHARS - 3] + "..."


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n:,} bytes"


# --------------------------------------------------------------------------- bytes
def read_bytes(path: str | os.PathLike, *, max_bytes: int,
               error: ErrorFactory = UntrustedFileError, what: str = "this kind of file") -> bytes:
    """The bytes of a regular file of at most `max_bytes` (`what` names the kind of file
    in the message when it is larger).

    Raises:
        FileNotFoundError: there is no such file (whether that is an error is the caller's
            call: a run without metrics yet, a sweep without a driver).
        the `error` factory's exception: anything else (a directory, a FIFO, too big,
            unreadable).
    """
    file = str(path)
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; no effect on regular files
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise
    except IsADirectoryError:
        raise error(file, "is a directory, not a file") from None
    except OSError as e:
        raise error(file, f"cannot read it: {e.strerror or e}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = "a directory" if stat.S_ISDIR(mode) else "a pipe, socket or device"
        raise error(file, f"is {kind}, not a file")
    with os.fdopen(fd, "rb") as fh:
        try:
            data = fh.read(max_bytes + 1)
        except OSError as e:
            raise error(file, f"cannot read it: {e.strerror or e}") from None
    if len(data) > max_bytes:
        raise error(file, f"larger than {_size(max_bytes)}, the most {what} may hold "
                          "(a damaged or foreign file?)")
    return data


def decode(data: bytes) -> str:
    """Strict UTF-8, or a SyntaxProblem naming the first bad byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SyntaxProblem(f"not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}: "
                            "a binary or damaged file)") from None


# --------------------------------------------------------------------------- JSON
# A JSON string (escapes included); brackets inside strings do not nest.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_OTHER = bytes(b for b in range(256) if b not in b"[]{}")
_SQUARE = bytes.maketrans(b"{}", b"[]")


def nesting_exceeds(data: bytes, limit: int) -> bool:
    """Whether JSON text nests deeper than `limit`, measured without recursion: strings
    removed, then only the brackets kept, then innermost `[]` pairs removed once per
    level; pairs left after `limit` passes are deeper. (UTF-8 multi-byte sequences hold
    no ASCII byte, so scanning bytes is exact.) Unbalanced brackets are left to the
    parser, which reports them."""
    s = _STRING.sub(b"", data).translate(_SQUARE, _OTHER)
    for _ in range(limit):
        t = s.replace(b"[]", b"")
        if len(t) == len(s):
            return False
        s = t
    return b"[]" in s


class _Duplicate(ValueError):
    pass


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d = dict(pairs)
    if len(d) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise _Duplicate(k)
            seen.add(k)
    return d


def loads(data: bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """Parse JSON bytes: strict UTF-8, nesting bounded before parsing, unique keys.

    Raises:
        SyntaxProblem: not UTF-8 or not JSON.
        BoundProblem: nested deeper than `max_depth`, or an object repeats a key.
    """
    text = decode(data)
    if nesting_exceeds(data, max_depth):
        raise BoundProblem(f"nested more than {max_depth} levels deep")
    try:
        return json.loads(text, object_pairs_hook=_unique_pairs)
    except _Duplicate as e:
        raise BoundProblem(f"an object has the key {short(e.args[0])} twice") from None
    except json.JSONDecodeError as e:
        raise SyntaxProblem(f"not valid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    except RecursionError:  # unbalanced brackets the scan left to the parser
        raise BoundProblem(f"nested more than {max_depth} levels deep") from None
    except ValueError as e:  # e.g. an integer of more than 4,300 digits
        raise SyntaxProblem(f"not valid JSON: {str(e).splitlines()[0][:200]}") from None


# --------------------------------------------------------------------------- schema
@functools.lru_cache(maxsize=None)
def _adapter(schema: Any) -> Any:
    from pydantic import TypeAdapter

    return TypeAdapter(schema)


_OBJECT_TYPES = ("model_type", "model_attributes_type", "dict_type")


def _loc(where: str, loc: tuple) -> str:
    out = where
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def validate(data: Any, schema: Any, file: str, *, expected: str,
             error: ErrorFactory = UntrustedFileError, where: str = "") -> Any:
    """`data` validated against `schema` (a pydantic model or any type pydantic's
    TypeAdapter takes), strictly; the first problem is `error(file, ...)` naming the key
    (`where` prefixes it) and `expected`, the shape in words."""
    from pydantic import ValidationError

    try:
        return _adapter(schema).validate_python(data, strict=True)
    except ValidationError as e:
        first = e.errors(include_url=False)[0]
        msg = "should be a JSON object" if first["type"] in _OBJECT_TYPES else first["msg"]
        got = "" if first["type"] == "missing" else f" (got {short(first.get('input'))})"
        more = e.error_count() - 1
        also = f" (and {more} more problem{'s' * (more > 1)})" if more else ""
        raise error(file, f"`{_loc(where, tuple(first['loc']))}`: {msg}{got}{also}; "
                          f"expected {expected}") from None


def read_json(path: str | os.PathLike, schema: Any = None, *, max_bytes: int, expected: str,
              max_depth: int = MAX_DEPTH, error: ErrorFactory = UntrustedFileError,
              what: str = "this kind of file") -> Any:
    """Read, bound, parse and (with `schema`) validate one JSON file; returns the parsed
    data (the validated value if a schema is given). FileNotFoundError propagates; every
    other problem is `error(file, problem)`."""
    file = str(path)
    data = read_bytes(path, max_bytes=max_bytes, error=error, what=what)
    try:
        obj = loads(data, max_depth=max_depth)
    except ParseError as e:
        raise error(file, f"{e.problem}; expected {expected}") from None
    if schema is None:
        return obj
    return validate(obj, schema, file, expected=expected, error=error)
