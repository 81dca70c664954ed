"""`fl-sweep simulate`: one simulation, no Ray, no MLflow (see sweeper/local.py).

fl_core (torch) is imported by the command itself, so `fl-sweep --help` does not pay for it.

Exit codes: 0 finished; 2 bad input (config, flags, a damaged checkpoint or metrics file:
fix it first); 3 diverged (a normal end, see status.json); 74 (sysexits' EX_IOERR) a write
in --out failed (disk full, quota, I/O error): nothing is wrong with the input, status.json
says failed, and `--resume` continues from the last checkpoint once there is room, so a
script can tell "retry later" from "fix the config".
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from sweeper.cli import app

EXIT_DIVERGED = 3
EXIT_WRITE_FAILED = 74  # sysexits.h EX_IOERR


@app.command()
def simulate(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="config YAML (keys as in docs)"),
    set_: List[str] = typer.Option([], "--set", help="override a dotted key, e.g. attack.fraction=0.033"),
    rounds: Optional[int] = typer.Option(None, "--rounds", min=1, help="override fl.rounds"),
    out: Path = typer.Option(Path("runs/simulate"), "--out", help="output directory"),
    resume: bool = typer.Option(False, "--resume", help="continue the run in --out from its checkpoint"),
    force: bool = typer.Option(False, "--force", help="start afresh even if --out holds a previous run (overwrites it)"),
) -> None:
    """Run one federated simulation; writes config.yaml, metrics.jsonl, state.pt in --out."""
    from fl_core.config import read_back, set_dotted
    from sweeper.configio import load_config, parse_override, read_yaml
    from sweeper.errors import SweeperError
    from sweeper.local import CONFIG, RunWriteError, check_fresh_out, run_local

    if resume and force:
        raise SweeperError("--resume and --force contradict each other: --force starts afresh")
    overrides = list(set_) + ([f"fl.rounds={rounds}"] if rounds is not None else [])
    if resume:
        raw = read_yaml(out / CONFIG) or {}
        for item in overrides:
            set_dotted(raw, *parse_override(item))
        cfg = read_back(raw, source=str(out / CONFIG))
    else:
        cfg = load_config(config, overrides)
        check_fresh_out(out, force)
    progress = None
    if sys.stderr.isatty():
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        progress = Progress(TextColumn("round {task.completed}/{task.total}"), BarColumn(),
                            TextColumn("{task.description}"), TimeRemainingColumn(), transient=False)
        progress.start()
        bar = progress.add_task("", total=cfg.fl.rounds)

    def on_round(r: int, m: dict | None) -> None:
        if progress is not None:
            desc = f"main {m['main_acc']:.3f} backdoor {m['backdoor_acc']:.3f}" if m else None
            progress.update(bar, completed=r, **({"description": desc} if desc else {}))

    try:
        status = run_local(cfg, out, resume=resume, on_round=on_round, force=force)
    except RunWriteError as e:
        if progress is not None:
            progress.stop()
            progress = None
        typer.echo(f"fl-sweep: error: {e}", err=True)
        raise typer.Exit(EXIT_WRITE_FAILED)
    finally:
        if progress is not None:
            progress.stop()
    if status == "diverged":
        typer.echo(f"diverged: see {out / 'status.json'}", err=True)
        raise typer.Exit(EXIT_DIVERGED)
    typer.echo(f"finished {cfg.fl.rounds} rounds; metrics in {out / 'metrics.jsonl'}")
