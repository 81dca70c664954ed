"""`fl-sweep validate | run | resume | status | ui | list`: sweeps over grid files.

`validate GRID` and `run GRID --dry-run` read and expand the grid and print the trial
table; they import neither Ray nor MLflow, start nothing and write nothing. Errors are
`GridError`/`SweeperError`: the CLI prints one line and exits 2. See docs/SWEEPER.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from sweeper import storage as st
from sweeper.cli import app
from sweeper.errors import SweeperError

# sweeper.grid (pydantic, fl_core), sweeper.runner (Ray, MLflow) and rich's tables are
# imported by the commands that use them: `fl-sweep --help` pays for none of them.

if TYPE_CHECKING:
    from sweeper.grid import Grid

ALLOW_LARGE_HELP = "accept a grid of more than 10,000 trials"
STORAGE_HELP = f"storage root of the sweeps (default ${st.STORAGE_ENV} or ./{st.DEFAULT_ROOT})"


def escape(text: str) -> str:
    """User strings (names, descriptions, paths) are never rich markup: `[/bold]` in a
    description must print, not crash. rich is imported only when something prints."""
    from rich.markup import escape as _escape

    return _escape(text)


def _console():
    from rich.console import Console

    c = Console()
    # piped or captured output: do not squeeze the tables into 80 columns
    return c if c.is_terminal else Console(width=220)


def _v(x) -> str:
    """A table cell: rich parses cells as markup, so user values are escaped."""
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.4g}"
    return escape(str(x))


def print_trial_table(grid: Grid) -> None:
    from rich.table import Table

    from sweeper.grid import bundles

    con = _console()
    res = grid.spec.resources
    t0 = grid.trials[0]
    b = bundles(t0.config, res)
    cpus = sum(x.get("CPU", 0) for x in b)
    gpus = sum(x.get("GPU", 0) for x in b)
    # user strings (name, path, description) are escaped: `[/bold]` in a description is text
    con.print(f"[bold]{escape(grid.name)}[/bold] ({escape(grid.path)}): {len(grid.trials)} trials"
              + (f" — {escape(grid.spec.description)}" if grid.spec.description else ""))
    con.print(f"varied keys: {escape(', '.join(grid.varied_keys) or '(none)')}")
    if grid.warmups:
        w = grid.spec.warmup
        con.print(f"warm-up: {len(grid.warmups)} shared clean warm-up(s) of {w.rounds} rounds (one per "
                  "seed), computed once and cached under <storage>/warmups/; trials continue from them")
    if res.executor == "in-process":
        con.print(f"per trial: {res.cpus_per_trial:g} CPU, clients trained in the trial process"
                  + (f", {gpus:g} GPU" if gpus else ""))
    else:
        con.print(f"per trial: {res.cpus_per_trial:g} CPU (trial) + {t0.config.fl.workers} "
                  f"worker(s) × {res.cpus_per_worker:g} CPU = {cpus:g} CPU"
                  + (f", {gpus:g} GPU" if gpus else "") + " (first trial)")
    con.print(f"max concurrent trials: {grid.spec.max_concurrent_trials or 'as many as fit'}; "
              f"MLflow experiment: {escape(grid.experiment)}")
    table = Table(show_edge=False, pad_edge=False)
    table.add_column("#", justify="right")
    table.add_column("trial key")
    for k in grid.varied_keys:
        table.add_column(k, justify="right")
    table.add_column("rounds", justify="right")
    for t in grid.trials:
        table.add_row(str(t.index), t.short_key, *[_v(t.overrides[k]) for k in grid.varied_keys],
                      str(t.config.fl.rounds))
    con.print(table)


@app.command()
def validate(
    grid: Path = typer.Argument(..., help="grid YAML file"),
    allow_large: bool = typer.Option(False, "--allow-large", help=ALLOW_LARGE_HELP),
) -> None:
    """Check a grid file and print its trials; launches and writes nothing."""
    from sweeper.grid import load_grid

    g = load_grid(grid, allow_large=allow_large)
    print_trial_table(g)
    print_pool_table(g)
    typer.echo(f"ok: {len(g.trials)} trials")


def print_pool_table(grid: Grid) -> None:
    """The attacker pool of each attacked (data, ε, seed, pool rule) beside its population:
    train images per writer (min / median / max) and the share of writers without a
    source-label image (`sweeper.datafit.pool_rows`; issue 25)."""
    from rich.table import Table

    from sweeper.datafit import pool_rows

    rows, notes = pool_rows(grid.trials)
    con = _console()
    for note in notes:
        con.print(f"attacker pool: {escape(note)}")
    if not rows:
        return
    table = Table(show_edge=False, pad_edge=False,
                  title="attacker pool vs population (train images per writer: min / median / max; "
                        "share without a source-label image)")
    for col in ("data", "backdoor", "ε", "pool rule", "seed", "pool", "pool images", "pool w/o src",
                "population", "pop. images", "pop. w/o src"):
        table.add_column(col, justify="left" if col in ("data", "backdoor", "pool rule") else "right")
    for r in rows:
        p, q = r["pool"], r["population"]
        table.add_row(escape(str(r["data"])), escape(str(r["backdoor"])), _v(r["fraction"]),
                      escape(str(r["pool_rule"])), str(r["seed"]), str(p.writers),
                      f"{p.min} / {p.median:g} / {p.max}", f"{p.without_source:.0%}", str(q.writers),
                      f"{q.min} / {q.median:g} / {q.max}", f"{q.without_source:.0%}")
    con.print(table)


@app.command()
def run(
    grid: Path = typer.Argument(..., help="grid YAML file"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the trials; launch and write nothing"),
    allow_large: bool = typer.Option(False, "--allow-large", help=ALLOW_LARGE_HELP),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster to use (e.g. 10.0.0.5:6379 or auto)"),
    storage: Optional[str] = typer.Option(None, "--storage", help=STORAGE_HELP),
    tracking_uri: Optional[str] = typer.Option(
        None, "--tracking-uri", help="MLflow store (default: sqlite file in the sweep directory)"),
    name: Optional[str] = typer.Option(None, "--name", help="sweep name (default: the grid's name)"),
    num_cpus: Optional[int] = typer.Option(None, "--num-cpus", min=1, help="local cluster only: CPUs"),
    num_gpus: Optional[int] = typer.Option(None, "--num-gpus", min=0, help="local cluster only: GPUs"),
    object_store_mb: Optional[int] = typer.Option(
        None, "--object-store-mb", min=80, help="local cluster only: object store size"),
) -> None:
    """Run a sweep on Ray Tune, tracked in MLflow."""
    from sweeper.grid import load_grid, name_problem

    if name is not None and name_problem(name):  # the grid's `name:` follows the same rule
        raise SweeperError(f"--name: {name_problem(name)}")
    g = load_grid(grid, allow_large=allow_large)
    if dry_run:
        print_trial_table(g)
        typer.echo(f"dry run: {len(g.trials)} trials, nothing launched")
        return
    from sweeper.runner import RayOptions, run_sweep

    out = run_sweep(g, storage=storage, name=name, tracking_uri=tracking_uri,
                    ray_opts=RayOptions(address, num_cpus, num_gpus, object_store_mb))
    print_outcome(out)
    if out.exit_code:
        raise typer.Exit(out.exit_code)


#: cells.csv columns of the end-of-run table (the paper's story side by side); the headers
#: are the report's own (`sweeper.report.page.TABLE_COLUMNS`)
END_COLUMNS = ("main_tail", "clean_tail", "backdoor_avg", "heldout_avg", "collateral_avg")


def print_cells(cells_csv: Path) -> None:
    """The report's per-cell numbers (mean over seeds; averages over the attacked rounds,
    docs/REPRODUCTION.md §3), printed at the end of a run so the effect is on screen."""
    import csv

    if not cells_csv.is_file():
        return
    from rich.table import Table

    from sweeper.report.page import TABLE_COLUMNS  # loaded already: the run just wrote the report

    header = dict(TABLE_COLUMNS)
    with open(cells_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    table = Table(show_edge=False, pad_edge=False, title="per cell (mean over seeds)")
    table.add_column("cell")
    for c in END_COLUMNS:
        table.add_column(header[c], justify="right")

    def num(v: str | None) -> str:
        try:
            x = float(v or "nan")
        except ValueError:
            return "-"
        return "-" if x != x else f"{x:.3f}"

    for r in rows:
        table.add_row(escape(r.get("cell", "")), *(num(r.get(c)) for c in END_COLUMNS))
    _console().print(table)


def print_outcome(out) -> None:
    """The end of a run/resume: how the trials ended and the commands to go on with."""
    counts, name = out.counts, out.name
    total = sum(counts.values())
    typer.echo(f"sweep {name}: {total} trials: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v)
               + f" ({out.seconds:.0f}s)")
    for label, message in out.failures:  # the original error, one line each (tracebacks: error.txt)
        typer.echo(f"  failed: {label}: {message}")
    print_cells(out.sweep_dir / "report" / "cells.csv")
    storage_opt = "" if out.sweep_dir.parent == st.storage_root(None) else f" --storage {out.sweep_dir.parent}"
    typer.echo(f"  status:    fl-sweep status {name}{storage_opt}")
    typer.echo(f"  dashboard: fl-sweep ui {name}{storage_opt}   (then open the address it prints)")
    if counts.get("failed") or counts.get("interrupted"):
        typer.echo(f"  resume:    fl-sweep resume {name}{storage_opt}   "
                   "(failed and unfinished trials continue from their last checkpoint)")
    else:
        typer.echo(f"  resume:    fl-sweep resume {name}{storage_opt}   "
                   "(after a crash, Ctrl-C or kill: unfinished trials continue from their last checkpoint)")


@app.command()
def resume(
    sweep: str = typer.Argument(..., help="sweep name (under --storage) or directory"),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster to use"),
    storage: Optional[str] = typer.Option(None, "--storage", help=STORAGE_HELP),
    num_cpus: Optional[int] = typer.Option(None, "--num-cpus", min=1, help="local cluster only: CPUs"),
    num_gpus: Optional[int] = typer.Option(None, "--num-gpus", min=0, help="local cluster only: GPUs"),
    object_store_mb: Optional[int] = typer.Option(None, "--object-store-mb", min=80),
) -> None:
    """Continue a sweep after a crash or Ctrl-C: unfinished and failed trials go on from
    their last checkpoint, in the same MLflow runs."""
    from sweeper.runner import RayOptions, resume_sweep

    out = resume_sweep(sweep, storage=storage,
                       ray_opts=RayOptions(address, num_cpus, num_gpus, object_store_mb))
    print_outcome(out)
    if out.exit_code:
        raise typer.Exit(out.exit_code)


@app.command()
def status(
    sweep: str = typer.Argument(..., help="sweep name (under --storage) or directory"),
    storage: Optional[str] = typer.Option(None, "--storage", help=STORAGE_HELP),
) -> None:
    """Table of a sweep's trials: state, round, last accuracies, MLflow run; totals; ETA."""
    from rich.table import Table
    from rich.text import Text

    from sweeper.status import duration_text, sweep_status
    from sweeper.tracking import redact_uri

    s = sweep_status(sweep, storage)
    con = _console()
    keys = s.manifest.get("varied_keys", [])
    table = Table(show_edge=False, pad_edge=False)
    for col in ["#", "trial key", *keys, "state", "round", "main_acc", "backdoor_acc", "run id"]:
        table.add_column(col, justify="right" if col not in ("trial key", "state", "run id") else "left")
    for t in s.trials:
        table.add_row(str(t.index), t.trial_key[:8], *[_v(t.overrides.get(k)) for k in keys],
                      t.state, f"{t.round}/{t.rounds}", _v(t.main_acc), _v(t.backdoor_acc),
                      t.run_id or "-")
    con.print(f"[bold]{escape(s.manifest['name'])}[/bold] ({escape(str(s.sweep_dir))}); "
              f"MLflow {escape(redact_uri(s.manifest['tracking_uri']))}")
    if s.driver is not None:
        stale = " — stale: that driver seems gone" if s.driver.stale() else ""
        con.print(Text(f"driver: {s.driver.describe()}{stale}"))
    else:
        con.print("driver: none (no `fl-sweep run`/`resume` holds this sweep)")
    con.print(table)
    counts = s.counts()
    done = sum(t.round for t in s.trials)
    total = sum(t.rounds for t in s.trials)
    con.print(f"{len(s.trials)} trials: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
              + f"; rounds {done}/{total}; ETA {duration_text(s.eta_seconds())}")
    if counts.get("running"):
        con.print("(states as last logged: if the sweep's driver has stopped, its running trials "
                  f"continue with `fl-sweep resume {s.manifest['name']}`)")


@app.command()
def ui(
    sweep: Optional[str] = typer.Argument(None, help="sweep name or directory (default: the only/latest sweep)"),
    storage: Optional[str] = typer.Option(None, "--storage", help=STORAGE_HELP),
    host: str = typer.Option("127.0.0.1", "--host", help="interface to bind; 0.0.0.0 exposes it to the network"),
    port: int = typer.Option(5000, "--port", min=1, max=65535),
    workers: int = typer.Option(1, "--workers", min=1, help="server worker processes"),
) -> None:
    """Open the MLflow dashboard on a sweep's store (blocks until Ctrl-C; stops the server
    and all its processes on Ctrl-C or SIGTERM). A sweep tracked by a remote MLflow server:
    prints that server's dashboard addresses and starts nothing. A sweep whose sqlite
    store is missing: refused (exit 2), nothing created."""
    from sweeper import ui as dash

    if sweep is None:
        sweeps = st.list_sweeps(st.storage_root(storage))
        if not sweeps:
            raise SweeperError(f"no sweeps under {st.storage_root(storage)}; run one with `fl-sweep run GRID`")
        sweep_dir, manifest = max(sweeps, key=lambda s: s[1].get("created", ""))
    else:
        sweep_dir = st.resolve_sweep(sweep, storage)
        manifest = st.read_manifest(sweep_dir)
    remote = dash.remote_base(manifest["tracking_uri"])
    if remote is not None:
        typer.echo(f"{manifest['name']} is tracked by the MLflow server {remote}; its dashboard is "
                   "there (no local server started):\n"
                   f"  trials:  {dash.landing_url(host, port, manifest, base=remote)}\n"
                   f"  summary: {dash.parent_url(host, port, manifest, base=remote)}")
        return
    from sweeper.tracking import require_store

    require_store(manifest, "ui")
    typer.echo(f"MLflow dashboard for {manifest['name']} (Ctrl-C stops it):\n"
               f"  trials:  {dash.landing_url(host, port, manifest)}\n"
               f"  summary: {dash.parent_url(host, port, manifest)}")
    rc = dash.serve(dash.server_command(sweep_dir, manifest, host, port, workers), typer.echo)
    if rc:
        raise typer.Exit(rc)


@app.command("list")
def list_(storage: Optional[str] = typer.Option(None, "--storage", help=STORAGE_HELP)) -> None:
    """Sweeps under the storage root."""
    from rich.table import Table

    root = st.storage_root(storage)
    sweeps = st.list_sweeps(root)
    if not sweeps:
        typer.echo(f"no sweeps under {root}")
        return
    table = Table(show_edge=False, pad_edge=False)
    for col in ("name", "trials", "created", "experiment", "grid file"):
        table.add_column(col)
    for d, m in sweeps:
        table.add_row(_v(d.name), _v(m.get("num_trials", "?")), _v(m.get("created", "?")),
                      _v(m.get("experiment", "?")), _v(m.get("grid_file", "?")))
    con = _console()
    con.print(f"sweeps under {escape(str(root))}:")
    con.print(table)
