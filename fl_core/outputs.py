"""One rule for every directory the tool writes whole: never delete or replace a path it
did not create.

Why: an output option (`--out`, `--dest`) that points at the wrong place (the sweep
storage, a user's directory that happens to have the output's name) must cost nothing.
So a directory the tool writes whole is built beside its destination, marked, and renamed
into place:

- the marker (`MARKER`, a small JSON file inside it) says which kind of output it is
  (`export`, `report`, `download`), where it came from (an export's sweep) and every path
  the tool wrote into it;
- a later run replaces the destination only if it is missing, empty, or marked as the same
  kind (and origin, where one is given) and holds nothing the marker does not list. A
  user's directory (no marker), a marked one the user added a file to, and another
  sweep's export of the same name are refused before anything is written;
- the swap moves the old directory aside, renames the new one in and only then removes the
  old one; if the rename fails, the old one is put back. A crash leaves the old output or
  the new one, never a mix, and never a missing one that had been there.

Torch-free and sweeper-free: `fl_core.data.download` uses it, and `sweeper.outputs` adds
the sweeper's own protected paths (storage root, sweep directories) on top of it.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from fl_core.errors import FLCoreError

MARKER = ".fl-output.json"
_MAX_MARKER_BYTES = 16 << 20  # ~200,000 paths: far above any real export
_FORMAT = 1


class OutputError(FLCoreError):
    """An output path the tool must not write: one line naming the option and the path.
    (Message-only, so it pickles and unpickles intact.)"""


def _sample(names: list[str]) -> str:
    """Up to three of `names` (found in any order), then `...` if there were more."""
    return ", ".join(sorted(names[:3])) + (", ..." if len(names) > 3 else "")


def resolve_dir(path: Path | str, option: str) -> Path:
    """`path` as an absolute path with symlinks resolved, for a directory the tool writes
    into (created if missing).

    Raises:
        OutputError: `path` is a file, lies under a file, or cannot be resolved (a
            symlink loop, a component that cannot be read).
    """
    raw = Path(path).expanduser()
    try:
        res = raw.resolve()
    except (OSError, RuntimeError) as e:  # RuntimeError: a symlink loop before Python 3.13
        raise OutputError(f"{option} {raw}: cannot be resolved ({e}); give a plain "
                          "directory path") from None
    for q in (res, *res.parents):
        try:
            st = q.stat()
        except (FileNotFoundError, NotADirectoryError):
            continue  # not there yet (or under a file: found on the way up)
        except OSError as e:
            raise OutputError(f"{option} {raw}: cannot be resolved ({e.strerror or e}: "
                              f"{q}); give a plain directory path") from None
        if not stat.S_ISDIR(st.st_mode):
            if q == res:
                raise OutputError(f"{option} {raw}: is a file, not a directory; give a "
                                  "directory (it is created if missing)")
            raise OutputError(f"{option} {raw}: {q} is a file, so nothing can be created "
                              "under it; give a directory path")
        break
    return res


def read_marker(d: Path) -> dict | None:
    """The marker of directory `d` (kind, origin, entries), or None if it has none or it
    is not one this module wrote (too large, not JSON, wrong shape): such a directory is
    treated as the user's."""
    try:
        with open(d / MARKER, "rb") as fh:
            blob = fh.read(_MAX_MARKER_BYTES + 1)
    except OSError:
        return None
    if len(blob) > _MAX_MARKER_BYTES:
        return None
    try:
        m = json.loads(blob.decode("utf-8"))
    except (ValueError, RecursionError):
        return None
    if not (isinstance(m, dict) and m.get("format") == _FORMAT and isinstance(m.get("kind"), str)
            and isinstance(m.get("origin"), (str, type(None)))
            and isinstance(m.get("entries"), list) and all(isinstance(e, str) for e in m["entries"])):
        return None
    return m


def _listing(d: Path) -> Iterator[str]:
    """Every path under `d` (relative, '/'-separated), symlinks listed but not followed."""
    for dirpath, dirnames, filenames in os.walk(d):
        rel = Path(dirpath).relative_to(d)
        for name in (*dirnames, *filenames):
            yield (rel / name).as_posix()


def check_replaceable(dest: Path, option: str, kind: str, origin: str | None = None) -> None:
    """Refuse `dest` unless writing the new output there loses nothing of the user's.

    Replaceable: a missing path, an empty directory, or a directory whose marker says it
    is a `kind` output (of `origin`, if given) and that holds only paths the marker lists.

    Raises:
        OutputError: `dest` is a file or a symlink, a directory this tool did not create
            (no marker), an output of another kind or origin, or a marked directory with
            paths the tool did not write.
    """
    try:
        st = dest.lstat()
    except FileNotFoundError:
        return
    except OSError as e:
        raise OutputError(f"{option} {dest}: cannot be read ({e.strerror or e})") from None
    if stat.S_ISLNK(st.st_mode):
        raise OutputError(f"{option} {dest}: is a symlink; it is not replaced (only "
                          f"directories this tool created are): move it away or choose another {option}")
    if not stat.S_ISDIR(st.st_mode):
        raise OutputError(f"{option} {dest}: is a file; it is not replaced: move it away or "
                          f"choose another {option}")
    with os.scandir(dest) as it:
        first = [e.name for _, e in zip(range(4), it)]
    if not first:
        return  # an empty directory: nothing to lose
    mark = read_marker(dest)
    if mark is None:
        raise OutputError(
            f"{option} {dest}: an existing directory this tool did not create (it holds "
            f"{_sample(first)}; no {MARKER}); it is never "
            f"replaced: move it away or choose another {option}")
    if mark["kind"] != kind:
        raise OutputError(f"{option} {dest}: holds an earlier {mark['kind']}, not a {kind}; "
                          f"it is not replaced: choose another {option}")
    if origin is not None and mark["origin"] != origin:
        raise OutputError(
            f"{option} {dest}: holds the {kind} of {mark['origin']}, not of {origin}; it is not "
            f"replaced: choose another {option} (or move it away)")
    ours = set(mark["entries"]) | {MARKER}
    extra: list[str] = []
    for p in _listing(dest):
        if p not in ours:
            extra.append(p)
            if len(extra) > 3:
                break
    if extra:
        raise OutputError(
            f"{option} {dest}: holds {_sample(extra)}, which "
            f"this tool did not write; it is not replaced: move {'it' if len(extra) == 1 else 'them'} "
            f"away or choose another {option}")


def _write_marker(d: Path, kind: str, origin: str | None) -> None:
    entries = sorted(_listing(d))
    blob = json.dumps({"format": _FORMAT, "kind": kind, "origin": origin, "entries": entries},
                      indent=0, ensure_ascii=False).encode("utf-8")
    (d / MARKER).write_bytes(blob + b"\n")


def _swap(staging: Path, dest: Path) -> None:
    """Rename `staging` to `dest`; an existing `dest` is moved aside first and removed only
    after the rename, and put back if the rename fails."""
    old = None
    if os.path.lexists(dest):
        old = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".old"))
        os.rename(dest, old / dest.name)
    try:
        os.rename(staging, dest)
    except BaseException:
        if old is not None:
            if not os.path.lexists(dest):
                os.rename(old / dest.name, dest)  # the earlier output back where it was
                old.rmdir()
            # else: leave it under `old`: never delete what we could not put back
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def building(dest: Path, option: str, kind: str, origin: str | None = None) -> Iterator[Path]:
    """A fresh directory beside `dest` to write the output into; when the block ends
    normally it is marked and swapped into place, else removed (`dest` untouched).

    `dest` is checked (`check_replaceable`) before the directory is made and again just
    before the swap. The new directory is 0755, not mkdtemp's 0700: an output follows
    its directory to shared file systems.
    """
    check_replaceable(dest, option, kind, origin)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp"))
    try:
        staging.chmod(0o755)
        yield staging
        _write_marker(staging, kind, origin)
        check_replaceable(dest, option, kind, origin)
        _swap(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
