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
import functools
import io
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from fl_core import safeio
from fl_core.state import atomic_write_bytes
from sweeper.errors import SweeperError

MANIFEST = "sweep.json"
TUNE_NAME = "tune"
STORAGE_ENV = "FL_SWEEP_STORAGE"
DEFAULT_ROOT = "sweeps"
MANIFEST_MAX_BYTES = 64 << 20  # ~500 bytes per trial: 100,000 trials fit
MANIFEST_SHAPE = ("the sweep manifest `fl-sweep run` writes: a JSON object with name, "
                  "tracking_uri, experiment_id, parent_run_id and trials [{index, trial_key, "
                  "rounds, overrides}]")


class SweepFileError(SweeperError):
    """A file of a sweep read back (sweep.json, driver.json, a warm-up's status.json or
    state.pt) is damaged or not what the sweeper wrote; names the file and the problem."""

    def __init__(self, file: str, problem: str, remedy: str = ""):
        self.file, self.problem, self.remedy = file, problem, remedy
        super().__init__(f"{file}: {problem}" + (f"; {remedy}" if remedy else ""))



def read_json(path: Path, schema: Any, *, max_bytes: int, expected: str, what: str) -> Any:
    """`fl_core.safeio.read_json` raising SweepFileError: the sweeper's guarded reader of
    the JSON files it reads back (FileNotFoundError propagates)."""
    return safeio.read_json(path, schema, max_bytes=max_bytes, expected=expected,
                            error=SweepFileError, what=what)


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


class Manifest(dict):
    """A validated sweep.json. A key it lacks is a one-line SweepFileError naming the file
    (a manifest written by an older version may lack what a newer command needs), never a
    KeyError traceback; `.get` still gives defaults."""

    def __init__(self, data: Mapping[str, Any], file: str, problem: str | None = None):
        super().__init__(data)
        self.file, self.problem = file, problem

    def __missing__(self, key: str) -> Any:
        if self.problem is not None:
            raise SweepFileError(self.file, self.problem)
        raise SweepFileError(self.file, f"has no `{key}`; expected {MANIFEST_SHAPE}")


@functools.cache
def _manifest_schema() -> type:
    """The manifest's schema, built on first use (pydantic stays out of CLI start-up).
    Only what every manifest has is required (older ones lack the rest); every key that is
    there must have its type. Unknown keys are kept: a newer version may add some."""
    from pydantic import BaseModel, ConfigDict, Field, model_validator

    from sweeper.grid import NAME_PATTERN

    class _Open(BaseModel):
        model_config = ConfigDict(strict=True, extra="allow")

    def opt_text() -> Any:  # an optional path or text, bounded
        return Field(None, max_length=1 << 16)

    class Trial(_Open):
        index: int = Field(ge=0)
        trial_key: str = Field(min_length=1, max_length=256, pattern=r"^[0-9A-Za-z_-]+$")
        rounds: int = Field(ge=1, le=10**9)
        overrides: dict[str, Any]
        bundles: list[dict[str, float]] = Field(None, max_length=4096)

    class Resources(_Open):
        cpus_per_trial: float = Field(None, gt=0, le=1024)

    class ManifestSchema(_Open):
        # pydantic's (Rust) regex has no \Z; its $ already means the end of the text only
        name: str = Field(pattern=NAME_PATTERN.removesuffix(r"\Z") + "$")
        tracking_uri: str = Field(min_length=1, max_length=4096)
        experiment_id: str = Field(min_length=1, max_length=256)
        parent_run_id: str = Field(min_length=1, max_length=256, pattern=r"^[0-9A-Za-z_-]+$")
        trials: list[Trial] = Field(None)
        num_trials: int = Field(None, ge=0)
        varied_keys: list[str] = Field(None)
        max_concurrent_trials: int | None = Field(None, ge=1)
        warmups: dict[str, dict[str, Any]] = Field(None)
        resources: Resources = Field(None)
        created: str = Field(None, max_length=64)
        experiment: str = opt_text()
        grid_file: str = opt_text()
        description: str | None = opt_text()
        launch_cwd: str = opt_text()
        storage_root: str = opt_text()

        @model_validator(mode="after")
        def _count(self):
            if self.trials is not None and self.num_trials is not None \
                    and self.num_trials != len(self.trials):
                raise ValueError(f"num_trials is {self.num_trials} but trials lists {len(self.trials)}")
            return self

    return ManifestSchema


def read_manifest(sweep_dir: Path) -> Manifest:
    """The sweep's manifest, bounded and validated (fl_core.safeio); any problem is one
    SweepFileError naming sweep.json and the key."""
    p = Path(sweep_dir) / MANIFEST
    try:
        data = read_json(p, None, max_bytes=MANIFEST_MAX_BYTES, expected=MANIFEST_SHAPE,
                         what="a sweep manifest")
    except FileNotFoundError:
        raise SweeperError(f"{sweep_dir}: not a sweep directory (no {MANIFEST})") from None
    safeio.validate(data, _manifest_schema(), str(p), expected=MANIFEST_SHAPE, error=SweepFileError)
    return Manifest(data, str(p))


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


def list_sweeps(root: Path) -> list[tuple[Path, Manifest]]:
    """Every sweep directory under `root` with its manifest. A sweep whose sweep.json is
    damaged is listed too, not skipped and not fatal (one bad file must not hide the other
    sweeps, nor hide itself): its manifest is empty but for `grid_file`, which says what
    is wrong (the column `fl-sweep list` shows last), and `manifest.problem`; reading any
    other key of it raises that problem as a SweepFileError."""
    out: list[tuple[Path, Manifest]] = []
    if not root.is_dir():
        return out
    for d in sorted(root.iterdir()):
        if (d / MANIFEST).is_file():
            try:
                out.append((d, read_manifest(d)))
            except SweeperError as e:
                problem = getattr(e, "problem", str(e))
                brief = problem.split("; expected ")[0]  # a table cell: the shape is in the docs
                out.append((d, Manifest({"grid_file": f"(damaged {MANIFEST}: {brief})"},
                                        str(d / MANIFEST), problem)))
    return out
