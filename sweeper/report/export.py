"""`fl-sweep export`: a sweep's runs as plain run directories (config.yaml + metrics.jsonl
+ status.json, the layout of `fl-sweep simulate --out`), without checkpoints or the MLflow
store. Why: the results of a sweep are a few kB per trial, its storage (checkpoints, Tune's
state, the sqlite store) hundreds of MB; an export can be committed, mailed or copied off a
cluster, and `fl-sweep report` merges exported directories with live sweeps like any other
source. A sweep too long for one machine's session is run in parts (subset grids, or seeds
on different clusters), each part exported, and reported together.

An exported run keeps its identity: the directory holds the run's resolved config, whose
`config_hash` is the trial key of the MLflow run (checked on export), so the report
deduplicates an exported run against the same run still in its store.

An export is an output like any other (`sweeper.outputs`): `OUT/<sweep>/` is built beside
and swapped in, and it replaces only an earlier export of the same sweep (same MLflow
parent run, or same source directory). Two sweeps of one name (two directories `a/runs`
and `b/runs`, or two stores) would land in the same `OUT/<name>/`: the second is refused,
never silently written over the first, since renaming either would break the name a
report shows for it; export them into different `--out` directories.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from fl_core.config import config_hash, parse_flat, set_dotted
from fl_core.errors import ConfigError
from sweeper import outputs
from sweeper.configio import dump_config
from sweeper.report.load import ReportError, load_one
from sweeper.rundir import CONFIG, METRICS, STATUS


@dataclass(frozen=True)
class Exported:
    """One exported sweep: where it went and how many runs of each status it holds."""

    sweep: str
    path: Path
    statuses: dict[str, int]
    rounds: int


def _flat_config(run: Mapping[str, Any]) -> dict[str, Any]:
    """The dotted config of a loaded run (its dotted keys and the seed)."""
    return {k: v for k, v in run.items() if k == "seed" or "." in k}


def _clean_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A metric row without the run id and without metrics this round did not log."""
    out: dict[str, Any] = {}
    for k, v in row.items():
        if k == "run_id" or v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        out[k] = int(v) if k == "round" else v
    return out


def _config_yaml(run: Mapping[str, Any]) -> str:
    """The run's config.yaml, as `fl-sweep simulate` writes it (`dump_config`). It must hash
    to the run's trial key, else a report would count the exported run and the live one as
    two replicates. A run of another engine version (its config does not parse) is written
    with its own keys, as loaded."""
    flat = _flat_config(run)
    try:
        cfg = parse_flat(flat, source=str(run.get("source")))
    except ConfigError:
        nested: dict[str, Any] = {}
        for k, v in flat.items():
            set_dotted(nested, k, v)
        return yaml.safe_dump(nested, sort_keys=True)
    key = config_hash(cfg)
    if run.get("trial_key") and key != run["trial_key"]:
        raise ReportError(
            f"{run.get('source')}: its config hashes to {key[:12]}, not to its trial key "
            f"{str(run['trial_key'])[:12]}; not exported (was it written by another engine version?)")
    return dump_config(cfg)


def write_run_dir(d: Path, run: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> None:
    """config.yaml, metrics.jsonl (rounds ascending) and status.json of one run in `d`."""
    from sweeper.jsonl import write_jsonl

    config = _config_yaml(run)
    d.mkdir(parents=True)
    (d / CONFIG).write_text(config)
    write_jsonl(d / METRICS, sorted((_clean_row(r) for r in rows), key=lambda r: r["round"]))
    (d / STATUS).write_text(json.dumps(
        {"status": run.get("status"), "sweep": run.get("sweep"), "source": run.get("source"),
         "trial_key": run.get("trial_key")}, indent=2, sort_keys=True) + "\n")


def _dir_name(run: Mapping[str, Any]) -> str:
    """trial_<first 16 hex digits of the trial key>; a key that is not a hash (a run of
    another engine version) is hashed first, so the name is stable across exports."""
    key = str(run.get("trial_key") or run["run_id"])
    if not (len(key) >= 16 and key.isalnum()):
        key = hashlib.sha256(key.encode()).hexdigest()
    return f"trial_{key[:16]}"


@dataclass(frozen=True)
class Loaded:
    """One sweep read for export: its name, its runs with an evaluated round (the longest
    first: of one trial twice, the longest is kept), their metric rows by run id, and
    where it came from (`origin`: its MLflow parent run, or the directory read)."""

    name: str
    runs: list[dict]
    rows: dict[str, list[dict]]
    origin: str | None = None


def load_for_export(source: str, tracking_uri: str | None = None,
                    storage_root: str | None = None) -> Loaded:
    """Read one sweep (a name or a directory, as `fl-sweep report` takes them)."""
    runs, metrics, parent, _notes = load_one(source, tracking_uri, storage_root)
    if not runs:
        raise ReportError(f"`{source}`: the sweep has no runs yet")
    by_run: dict[str, list[dict]] = {}
    for m in metrics:
        by_run.setdefault(m["run_id"], []).append(m)
    kept = sorted((r for r in runs if by_run.get(r["run_id"])), key=lambda r: -len(by_run[r["run_id"]]))
    if not kept:
        raise ReportError(f"`{source}`: no run has an evaluated round yet; nothing to export")
    origin = (f"MLflow parent run {parent.run_id}" if parent is not None
              else f"directory {Path(source).expanduser().resolve()}")
    return Loaded(str(runs[0]["sweep"]), kept, by_run, origin)


def export_dest(loaded: Loaded, out: Path) -> Path:
    """Where `export_sweep` writes `loaded`: `out/<sweep name>/`, after checking that it may
    (`sweeper.outputs`: `out` not a file, not in or around a sweep; `<name>` missing or an
    earlier export of the same sweep).

    Raises:
        OutputError: see above; nothing is written.
    """
    if not outputs.safe_name(loaded.name):
        raise ReportError(f"{loaded.origin or 'export'}: its sweep name {loaded.name!r} cannot name a "
                          "directory (a path separator, a leading '.', or a control character)")
    dest = outputs.check_out(out, "--out") / loaded.name
    outputs.check_replaceable(dest, "--out", "export", loaded.origin)
    return dest


def export_sweep(loaded: Loaded, out: Path) -> Exported:
    """Export the runs `load_for_export` read (those with an evaluated round) to
    `out/<sweep name>/` (`export_dest`).

    The directory is built beside its destination and renamed into place, replacing an
    earlier export of the same sweep: a crash leaves the earlier export or the new one,
    never a mix (`sweeper.outputs.building`).
    """
    dest = export_dest(loaded, out)
    statuses: dict[str, int] = {}
    rounds = 0
    with outputs.building(dest, "--out", "export", loaded.origin) as tmp:
        names: set[str] = set()
        for r in loaded.runs:
            dn = _dir_name(r)
            if dn in names:
                continue
            names.add(dn)
            write_run_dir(tmp / dn, r, loaded.rows[r["run_id"]])
            statuses[str(r.get("status"))] = statuses.get(str(r.get("status")), 0) + 1
            rounds += len(loaded.rows[r["run_id"]])
    return Exported(loaded.name, dest, statuses, rounds)
