"""Where a sweep lives on disk, and its manifest.

A sweep directory `<storage root>/<name>/` holds everything needed to watch and resume
it, and nothing else:

    sweep.json     the manifest (grid path, tracking URI, experiment and parent run ids)
    grid.yaml      the grid file as it was when the sweep started
    trials.csv     the resolved trial table
    mlflow.db      the default MLflow store (sqlite), artifacts/ its artifact root
    tune/          Ray Tune's experiment directory (trial checkpoints, experiment state)
    driver.lock    flock'ed by the running driver; driver.json says who (sweeper.lock)

The storage root must be a path every node of the cluster sees (a shared mount) when
trials run on several machines. All writes here are atomic (temp file + os.replace).
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from fl_core.state import atomic_write_bytes
from sweeper.errors import SweeperError

MANIFEST = "sweep.json"
TUNE_NAME = "tune"
STORAGE_ENV = "FL_SWEEP_STORAGE"
DEFAULT_ROOT = "sweeps"


def storage_root(option: str | None = None) -> Path:
    """`--storage`, else $FL_SWEEP_STORAGE, else ./sweeps; always absolute (Tune and
    the trials run in other working directories)."""
    raw = option or os.environ.get(STORAGE_ENV) or DEFAULT_ROOT
    if "://" in raw:
        raise SweeperError(
            f"--storage {raw}: URIs are not supported for the sweep directory; mount the "
            "bucket or NFS share and pass its local path (see docs/SWEEPER.md, Cluster)"
        )
    return Path(raw).expanduser().resolve()


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode("utf-8")))


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def csv_text(rows: Iterable[Mapping[str, Any]]) -> str:
    rows = list(rows)
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return buf.getvalue()


def create_sweep_dir(sweep_dir: Path) -> None:
    """Create a new sweep's directory, failing if it exists: of two `fl-sweep run` of one
    name, exactly one gets it (mkdir is atomic); the other gets a SweeperError."""
    sweep_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        sweep_dir.mkdir()
    except FileExistsError:
        raise SweeperError(
            f"sweep {sweep_dir.name!r} already exists at {sweep_dir} (another `fl-sweep run` "
            f"just created it?); `fl-sweep resume {sweep_dir.name}` continues it, `--name NEW` "
            "starts another"
        ) from None


def read_manifest(sweep_dir: Path) -> dict[str, Any]:
    p = sweep_dir / MANIFEST
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SweeperError(f"{sweep_dir}: not a sweep directory (no {MANIFEST})") from None
    except (OSError, json.JSONDecodeError) as e:
        raise SweeperError(f"{p}: unreadable manifest ({e})") from None


def resolve_sweep(name_or_path: str, storage: str | None = None) -> Path:
    """A sweep given by directory path or by name under the storage root."""
    p = Path(name_or_path).expanduser()
    if (p / MANIFEST).is_file():
        return p.resolve()
    root = storage_root(storage)
    q = root / name_or_path
    if (q / MANIFEST).is_file():
        return q
    known = [s.name for s, _ in list_sweeps(root)]
    hint = f"; sweeps there: {', '.join(known)}" if known else "; there are no sweeps there yet"
    raise SweeperError(
        f"no sweep {name_or_path!r} (neither a sweep directory nor a name under {root}){hint}"
    )


def list_sweeps(root: Path) -> list[tuple[Path, dict[str, Any]]]:
    out = []
    if not root.is_dir():
        return out
    for d in sorted(root.iterdir()):
        if (d / MANIFEST).is_file():
            try:
                out.append((d, read_manifest(d)))
            except SweeperError:
                continue
    return out
