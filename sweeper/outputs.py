"""The one rule for every output fl-sweep writes: never delete or replace anything it did
not create (the mechanism is `fl_core.outputs`: marker, build beside, swap, restore).

On top of it, an output must keep clear of what the sweeper reads and runs: an `--out`
that is, contains or lies inside the sweep storage root, a sweep directory (one holding
`sweep.json`) or a directory being read (a SWEEP argument) is refused before anything is
read or written. `fl-sweep export --out S` with S the storage root once replaced the live
sweep `S/<name>` (its store, checkpoints and Tune state) with the export.

Errors are `fl_core.outputs.OutputError` (an FLCoreError, re-exported here): the CLI prints
one line and exits 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from fl_core import outputs as core
from fl_core.outputs import MARKER, OutputError, building, check_replaceable  # noqa: F401 (the mechanism)
from sweeper.storage import MANIFEST


def safe_name(name: str) -> bool:
    """Whether `name` can be one path component of an output (an export's sweep name comes
    from a store or a directory someone sent: `../x`, `a/b` or a newline must not steer
    where the output lands)."""
    return (bool(name) and name not in (".", "..") and not name.startswith(".")
            and not any(c in name for c in "/\\\0") and name.isprintable())


def _is_sweep_dir(p: Path) -> bool:
    try:
        return (p / MANIFEST).is_file()
    except OSError:
        return False


def _existing_dir(p: Path | str | None) -> Path | None:
    """`p` resolved if it is an existing directory (only what exists can be harmed)."""
    if p is None:
        return None
    try:
        q = Path(p).expanduser()
        return q.resolve() if q.is_dir() else None
    except (OSError, RuntimeError):
        return None


def _relation(p: Path, q: Path) -> str | None:
    if p == q:
        return "is"
    if q in p.parents:
        return "is inside"
    if p in q.parents:
        return "contains"
    return None


def _protected_reason(p: Path, protected: Iterable[tuple[str, Path]]) -> str | None:
    """Why an output at resolved path `p` would touch what the sweeper reads, or None."""
    for what, q in protected:
        rel = _relation(p, q)
        if rel:
            return f"{rel} {what} {q}"
    for q in (p, *p.parents):
        if _is_sweep_dir(q):
            return f"{'is' if q == p else 'is inside'} the sweep directory {q}"
    try:
        children = [c for _, c in zip(range(10_000), p.iterdir())] if p.is_dir() else []
    except OSError:
        children = []
    for c in children:
        if _is_sweep_dir(c):
            return f"contains the sweep directory {c}"
    return None


def check_out(path: Path | str, option: str = "--out", *, storage_root: Path | None = None,
              sources: Iterable[str] = ()) -> Path:
    """`path` resolved, after refusing a file, a path under a file, an unresolvable path
    (symlink loop), and a path that is, contains or lies inside the storage root, a sweep
    directory or one of the `sources` being read.

    Returns:
        The resolved absolute path (write there, not to `path`).
    """
    res = core.resolve_dir(path, option)
    protected = [(what, d) for what, d in
                 [("the sweep storage root", _existing_dir(storage_root)),
                  *(("the source", _existing_dir(s)) for s in sources)] if d is not None]
    why = _protected_reason(res, protected)
    if why:
        raise OutputError(f"{option} {path}: {why}; outputs never go into, over or around a "
                          "sweep or what is being read: choose a directory outside it")
    return res

