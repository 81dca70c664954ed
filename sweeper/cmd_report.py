"""`fl-sweep report SWEEP... [--out DIR] [--claims]`: figures, summary page, the paper's
claims and the privacy of weak DP for one or more sweeps (see sweeper/report/); and
`fl-sweep export`.

Both take the same care as `run`: credentials in `--tracking-uri` are moved into MLflow's
variables at the entry (nothing downstream, printed or written, ever holds them), and
`--out` follows the one rule for outputs (`sweeper.outputs`), checked before anything is
read, computed or written.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional

import typer

from sweeper.cli import app
from sweeper.cmd_sweep import escape

# The report's modules (pandas, matplotlib, MLflow) are imported by the command itself:
# `fl-sweep --help` and the other commands do not pay for them.

VERDICT_STYLE = {"PASS": "green", "FAIL": "red", "N.A.": "yellow"}


def _thresholds(items: list[str]):
    from sweeper.report.claims import Thresholds
    from sweeper.report.load import ReportError

    pairs = {}
    for item in items:
        if "=" not in item:
            raise ReportError(f"--threshold {item!r}: expected name=value, e.g. high_backdoor=0.7")
        k, v = item.split("=", 1)
        pairs[k.strip()] = v.strip()
    try:
        return Thresholds.from_overrides(pairs)
    except ValueError as e:
        raise ReportError(f"--threshold: {e}") from None


def _tracking_uri(uri: str | None) -> str | None:
    """`--tracking-uri` without its credentials, which go into MLFLOW_TRACKING_USERNAME /
    PASSWORD / TOKEN (as `run` does; variables already set win): the URI is printed in
    notes and errors and written into an export's status.json. An http(s)
    $MLFLOW_TRACKING_URI (read when a sweep name is not found under the storage root) is
    cleaned the same way."""
    import os

    from sweeper.tracking import normalize_uri, take_credentials

    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env and env.lower().startswith(("http://", "https://")):
        os.environ["MLFLOW_TRACKING_URI"] = take_credentials(env)[0]
    return normalize_uri(take_credentials(uri)[0]) if uri else uri


@app.command()
def report(
    sweeps: List[str] = typer.Argument(
        ..., help="sweep names or directories (`fl-sweep run` sweeps, MLflow stores, or "
        "`fl-sweep simulate` outputs); several are merged (e.g. fig4a fig4_baseline)"),
    out: Optional[Path] = typer.Option(None, "--out", help="output directory (default: reports/<sweep names>)"),
    claims: bool = typer.Option(False, "--claims", help="check the paper's six claims"),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="MLflow store to read sweep names from"),
    storage: Optional[str] = typer.Option(None, "--storage", help="storage root of the sweeps (default $FL_SWEEP_STORAGE or ./sweeps)"),
    threshold: List[str] = typer.Option([], "--threshold", help="override a claim threshold, name=value (see docs/REPRODUCTION.md)"),
    delta: Optional[float] = typer.Option(
        None, "--delta", help="δ of the DP accounting (default: sweeper.report.privacy.DEFAULT_DELTA, 1e-5)"),
    population: Optional[int] = typer.Option(None, "--population", min=1, help="K for the DP accounting (default: counted from the data)"),
    heldout: bool = typer.Option(False, "--heldout", help="plot the held-out backdoor accuracy instead of the attacker's own set"),
    no_log: bool = typer.Option(False, "--no-log", help="do not log the report to the sweeps' MLflow parent runs"),
) -> None:
    """Paper-style figures, a summary page and (with --claims) the paper's claims."""
    from rich.console import Console
    from rich.table import Table

    from sweeper import outputs
    from sweeper.report.claims import format_check
    from sweeper.report.load import ReportError, load_sweeps
    from sweeper.report.page import build_report, log_to_mlflow
    from sweeper.report.privacy import DEFAULT_DELTA, check_delta, check_population
    from sweeper.storage import storage_root

    tracking_uri = _tracking_uri(tracking_uri)
    root = storage_root(storage)
    if out is not None:  # before anything is read or computed
        outputs.check_replaceable(outputs.check_out(out, "--out", storage_root=root, sources=sweeps),
                                  "--out", "report")
    delta = check_delta(DEFAULT_DELTA if delta is None else delta)  # before any store is read
    check_population(population)
    th = _thresholds(threshold)
    t0 = time.monotonic()
    data = load_sweeps(sweeps, tracking_uri=tracking_uri, storage_root=storage)
    if out is None and not outputs.safe_name(data.name):
        raise ReportError(f"the sweep name {data.name!r} cannot name the default report "
                          "directory reports/<name>; pass --out DIR")
    out_dir = out or Path("reports") / data.name
    dest = outputs.check_out(out_dir, "--out", storage_root=root, sources=sweeps)
    # built beside and swapped in whole: a crash (or a bad figure) leaves the earlier report
    with outputs.building(dest, "--out", "report") as staging:
        rep = build_report(data, staging, claims=claims, thresholds=th, delta=delta,
                           population=population,
                           backdoor_metric="backdoor_acc_heldout" if heldout else "backdoor_acc")
    rep.files = [dest / f.relative_to(staging) for f in rep.files]
    rep.out_dir = dest
    if data.parents and not no_log:
        rep.notes += log_to_mlflow(data, rep)
    con = Console(soft_wrap=True, width=max(100, Console().width))
    # every user string (names, cell labels, paths) is escaped: `[/bold]` in a label is text
    con.print(f"[bold]{escape(data.name)}[/bold]: {len(data.runs)} runs, {len(data.cells())} cells")
    table = Table(show_edge=False, pad_edge=False)
    for h in ("cell", "seeds", "rounds", "main (tail)", "backdoor (avg)", "backdoor (final)"):
        table.add_column(h, justify="left" if h == "cell" else "right")
    for _, r in rep.cells.iterrows():
        table.add_row(escape(str(r["cell"])), str(r["seeds"]), str(r["rounds_max"]), f"{r['main_tail']:.3f}",
                      f"{r['backdoor_avg']:.3f}", f"{r['backdoor_final']:.3f}")
    con.print(table)
    for p in rep.privacy:
        con.print(f"DP {escape('[' + str(p.cell) + ']')}: z = {p.noise_multiplier:.4g}, q = {p.sampling_rate:.4g}, "
                  f"{p.rounds} rounds → ε = {p.epsilon:.4g} at δ = {p.delta:g}: {p.verdict}")
    if rep.claims is not None:
        for c in rep.claims:
            style = VERDICT_STYLE[c.verdict]
            con.print(f"[{style}]{c.verdict:>4}[/{style}] claim {c.number}: {escape(c.claim)}")
            for ch in c.checks:
                con.print(f"       {format_check(ch)}", markup=False)
            for ch in c.extras:
                con.print(f"       extra `{ch.name}` (not in the verdict): {format_check(ch)}", markup=False)
            if c.note:
                con.print(f"       {c.note}", markup=False)
    for n in rep.notes:
        con.print(f"note: {n}", markup=False)
    con.print(f"report: {out_dir / 'report.md'} (and report.html, figures/, cells.csv"
              + (", claims.json" if claims else "") + f") in {time.monotonic() - t0:.1f} s", markup=False)


@app.command()
def export(
    sweeps: List[str] = typer.Argument(
        ..., help="sweep names or directories, as `fl-sweep report` takes them"),
    out: Path = typer.Option(..., "--out", help="directory to write <sweep name>/trial_<key>/ into"),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="MLflow store to read sweep names from"),
    storage: Optional[str] = typer.Option(None, "--storage", help="storage root of the sweeps (default $FL_SWEEP_STORAGE or ./sweeps)"),
) -> None:
    """Write each run's config and metrics as plain directories (no checkpoints, no store):
    small enough to commit or copy off a cluster; `fl-sweep report DIR` reads them.
    OUT/<sweep> replaces only an earlier export of the same sweep; two sweeps of one name
    need different --out directories."""
    from sweeper import outputs
    from sweeper.report.export import export_dest, export_sweep, load_for_export
    from sweeper.storage import storage_root

    tracking_uri = _tracking_uri(tracking_uri)
    outputs.check_out(out, "--out", storage_root=storage_root(storage), sources=sweeps)
    # read every sweep and check every destination first: a bad name or a refused
    # destination among several exits 2 before anything is written
    loaded = [load_for_export(s, tracking_uri=tracking_uri, storage_root=storage) for s in sweeps]
    seen: dict = {}
    for s, one in zip(sweeps, loaded):
        dest = export_dest(one, out)
        if dest in seen:
            raise outputs.OutputError(
                f"--out {out}: `{seen[dest]}` and `{s}` are both sweeps named {one.name!r}, so both "
                f"would be exported to {dest}; export them into different --out directories")
        seen[dest] = s
    for one in loaded:
        e = export_sweep(one, out)
        states = ", ".join(f"{n} {k}" for k, n in sorted(e.statuses.items()))
        typer.echo(f"{e.sweep}: {sum(e.statuses.values())} runs ({states}), {e.rounds} evaluated rounds → {e.path}")
