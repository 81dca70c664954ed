"""Checksummed, atomic download of TFF's Federated EMNIST archives.

TFF publishes the h5 pairs as tar.bz2 archives (see ../shared/paper/NOTES.md for the
URLs and sha256). We stream the archive to a temporary file inside `dest_dir`, hashing as
we go. Only when the hash matches do we unpack it (tarfile's "data" filter rejects links
and paths that escape the directory) into a temporary directory, which is then renamed
into place. An interrupted or corrupt download therefore never leaves a partial archive or
a half-unpacked directory that a later run could mistake for real data. Progress goes
to an optional callback; fl_core imports no progress-bar library (the CLI passes one).

`dest_dir/<archive name>/` is an output like any other (`fl_core.outputs`): it replaces
only an earlier download (marked), never a directory of the user's that happens to have
the archive's name; that is refused before anything is downloaded.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Mapping

from fl_core import outputs
from fl_core.errors import DatasetError

# progress(bytes_done, bytes_total or None if the server sent no Content-Length)
Progress = Callable[[int, int | None], None]

_BLOCK = 1 << 20
_MARKER = ".sha256"  # in the unpacked directory: which archive it came from


@dataclass(frozen=True)
class Variant:
    """One published archive: where it is, its sha256, and what it unpacks to."""

    url: str
    sha256: str
    description: str


VARIANTS: Mapping[str, Variant] = MappingProxyType({
    "digits": Variant(
        "https://storage.googleapis.com/tff-datasets-public/fed_emnist_digitsonly.tar.bz2",
        "55333deb8546765427c385710ca5e7301e16f4ed8b60c1dc5ae224b42bd5b14b",
        "digits only: 3,383 writers, fed_emnist_digitsonly_{train,test}.h5",
    ),
    "all": Variant(
        "https://storage.googleapis.com/tff-datasets-public/fed_emnist.tar.bz2",
        "fe1ed5a502cea3a952eb105920bff8cffb32836b5173cb18a57a32c3606f3ea0",
        "digits + letters: 3,400 writers, fed_emnist_{train,test}.h5 (the loader keeps digits)",
    ),
})


def archive_dir_name(url: str) -> str:
    """`.../fed_emnist_digitsonly.tar.bz2` → `fed_emnist_digitsonly`.

    The name becomes a directory under `--dest` that a stale copy of is replaced, so it
    must be a plain file name: a URL ending in `/`, `/.` or `/..`, or whose last part
    is only an archive suffix, is refused (`..` once moved the whole `--dest` aside).
    """
    from urllib.parse import unquote, urlsplit

    try:
        path = urlsplit(url).path
    except ValueError:
        path = ""
    raw = path.rsplit("/", 1)[-1]
    name = unquote(raw)
    for suffix in (".tar.bz2", ".tar.gz", ".tgz", ".tar.xz", ".tar"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    if (not name or name in (".", "..") or name.startswith(".") or "/" in name or "\\" in name
            or "\0" in name):
        raise DatasetError(
            url, f"the URL names no archive file (its last path part is {raw!r})",
            "give the URL of the archive file itself, e.g. https://host/path/fed_emnist.tar.bz2",
        )
    return name


def _fetch(url: str, out: Path, progress: Progress | None) -> str:
    """Stream `url` into `out`; return the sha256 of what was written."""
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, open(out, "wb") as fh:
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            done = 0
            if progress:
                progress(0, total)
            while block := resp.read(_BLOCK):
                fh.write(block)
                digest.update(block)
                done += len(block)
                if progress:
                    progress(done, total)
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise DatasetError(url, f"download failed ({e})", "check the URL and the network, or download "
                           "the archive by hand and unpack it into a directory for data.path") from None
    return digest.hexdigest()


def _unpack(archive: Path, into: Path, url: str) -> None:
    try:
        with tarfile.open(archive, "r:*") as tar:
            tar.extractall(into, filter="data")
    except (tarfile.TarError, OSError) as e:
        raise DatasetError(url, f"the archive could not be unpacked ({e})", "retry the download") from None


def _marked_sha(d: Path) -> str | None:
    """The sha256 an earlier download recorded in `d` (read bounded: `d` may be anyone's)."""
    try:
        with open(d / _MARKER, "rb") as fh:
            return fh.read(200).decode("ascii", "replace").strip()
    except OSError:
        return None


def download_target(url: str, sha256: str, dest_dir: Path | str, option: str = "dest_dir") -> Path:
    """`dest_dir/<archive name>`, resolved: where `download_archive` unpacks `url`.

    Raises:
        DatasetError: the URL names no archive file.
        OutputError: `dest_dir` is a file, under a file or unresolvable, or the archive's
            directory exists and is neither this archive's download (kept as is) nor an
            earlier download that may be replaced (`fl_core.outputs.check_replaceable`).
    """
    final = outputs.resolve_dir(dest_dir, option) / archive_dir_name(url)
    if _marked_sha(final) != sha256.strip().lower():
        outputs.check_replaceable(final, option, "download")
    return final


def download_archive(url: str, sha256: str, dest_dir: Path | str, *, progress: Progress | None = None,
                     option: str = "dest_dir") -> Path:
    """Download a tar archive, verify it and unpack it to `dest_dir/<archive name>/`.

    Args:
        url: http(s) or file URL of a tar(.bz2/.gz/.xz) archive.
        sha256: expected hex sha256 of the archive bytes.
        dest_dir: created if needed. Temporary files live here too, so the final rename is
            atomic (same filesystem).
        progress: called with (bytes done, total bytes or None) while downloading.
        option: how errors name `dest_dir` (the CLI passes `--dest`).

    Returns:
        The directory holding the unpacked files. If it already exists with a marker for
        this sha256, nothing is downloaded.

    Raises:
        DatasetError: the download failed, the checksum differs (expected and actual hash
            are named; nothing is left behind), or the archive is not a valid tar.
        OutputError: `dest_dir` is a file, under a file or unresolvable, or
            `dest_dir/<archive name>` exists and is not an earlier download (a user's
            directory is never replaced); raised before anything is downloaded.
    """
    sha256 = sha256.strip().lower()
    final = download_target(url, sha256, dest_dir, option)  # checked before anything is touched
    if _marked_sha(final) == sha256:
        return final
    dest_dir = final.parent
    created = not dest_dir.exists()
    dest_dir.mkdir(parents=True, exist_ok=True)
    fd, part_name = tempfile.mkstemp(dir=dest_dir, prefix=f".{final.name}.", suffix=".part")
    os.close(fd)
    part = Path(part_name)
    try:
        actual = _fetch(url, part, progress)
        if actual != sha256:
            raise DatasetError(
                url, f"sha256 mismatch: expected {sha256}, got {actual}",
                "the download is corrupt or the URL serves another file; retry, or pass the "
                "right --sha256 for --url (nothing was kept)",
            )
        # unpacked beside, marked, swapped in: never half-written, never over a user's directory
        with outputs.building(final, option, "download") as staging:
            _unpack(part, staging, url)
            (staging / _MARKER).write_text(sha256 + "\n")
        return final
    finally:
        part.unlink(missing_ok=True)
        if created and dest_dir.is_dir() and not any(dest_dir.iterdir()):
            dest_dir.rmdir()  # we made it and failed: leave nothing behind


def find_h5_pair(directory: Path) -> Path:
    """The directory under `directory` (itself or below) that holds a `*_train.h5` with its
    `*_test.h5`: what to pass as `data.path` for `data.source=tff-h5`."""
    for train in sorted(Path(directory).rglob("*_train.h5")):
        if train.with_name(train.name[: -len("_train.h5")] + "_test.h5").is_file():
            return train.parent
    raise DatasetError(str(directory), "the archive holds no *_train.h5 / *_test.h5 pair",
                       "check --url: it must point to a TFF Federated EMNIST archive")
