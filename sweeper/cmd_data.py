"""`fl-sweep data download`: fetch TFF's full Federated EMNIST h5 pair (3,383 writers).

The embedded sample (439 real writers) needs no download; this is for the paper's full
population. The work (streaming, sha256 check, atomic unpack) is in
`fl_core.data.download`; this module adds the options, a rich progress bar and the
`--set` lines to use the result. `--dest` follows the one rule for outputs
(`fl_core.outputs`): a directory of the user's named like the archive is never replaced.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Optional

import typer

from fl_core.errors import ConfigError, UnknownComponentError
from sweeper.cli import app

ENV_DIR = "FL_BACKDOOR_DATA"
#: The keys of `fl_core.data.download.VARIANTS`, for the help text: importing that module
#: imports fl_core.data (numpy, h5py, torch), which `fl-sweep --help` should not pay for.
#: A test checks that the two agree.
VARIANT_NAMES = ("digits", "all")

data_app = typer.Typer(no_args_is_help=True, help="Datasets: download the full TFF Federated EMNIST files.")
app.add_typer(data_app, name="data")


def default_dest() -> Path:
    """`$FL_BACKDOOR_DATA`, else `~/.cache/fl_backdoor/`."""
    return Path(os.environ.get(ENV_DIR) or Path.home() / ".cache" / "fl_backdoor").expanduser()


def _source(variant: str, url: str | None, sha256: str | None) -> tuple[str, str]:
    """(url, sha256) from --variant, or from --url/--sha256 given together."""
    from fl_core.data.download import VARIANTS, archive_dir_name

    if url is None and sha256 is None:
        v = VARIANTS.get(variant)
        if v is None:
            raise UnknownComponentError("--variant", variant, VARIANTS)
        return v.url, v.sha256
    if url is None or sha256 is None or not re.fullmatch(r"[0-9a-fA-F]{64}", sha256.strip()):
        raise ConfigError("--sha256", sha256, "the archive's 64-hex-digit sha256, given together with --url")
    archive_dir_name(url)  # a URL without an archive file name is refused before any download
    return url, sha256


@data_app.command("download")
def download(
    dest: Optional[Path] = typer.Option(
        None, "--dest", help=f"directory to download into (default: ${ENV_DIR}, else ~/.cache/fl_backdoor)"
    ),
    variant: str = typer.Option("digits", "--variant", help=f"which TFF archive: {' | '.join(VARIANT_NAMES)}"),
    url: Optional[str] = typer.Option(None, "--url", help="another archive URL (needs --sha256)"),
    sha256: Optional[str] = typer.Option(None, "--sha256", help="expected sha256 of --url"),
) -> None:
    """Download, verify (sha256) and unpack a Federated EMNIST h5 pair."""
    from fl_core.data.download import download_archive, download_target, find_h5_pair

    src_url, src_sha = _source(variant, url, sha256)
    target = dest if dest is not None else default_dest()
    download_target(src_url, src_sha, target, "--dest")  # refused before the first line is printed
    typer.echo(f"downloading {src_url}\n  into {target}", err=True)
    progress = None
    callback = None
    if sys.stderr.isatty():
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

        progress = Progress(BarColumn(), DownloadColumn(), TransferSpeedColumn(), TextColumn("{task.description}"))
        bar = progress.add_task("", total=None)
        progress.start()

        def callback(done: int, total: int | None) -> None:
            # the archive is verified and unpacked after the last byte: say so while it runs
            note = "verifying and unpacking…" if total is not None and done >= total else ""
            progress.update(bar, completed=done, total=total, description=note)

    try:
        unpacked = download_archive(src_url, src_sha, target, progress=callback, option="--dest")
    finally:
        if progress is not None:
            progress.stop()
    pair = find_h5_pair(unpacked)
    files = ", ".join(sorted(p.name for p in pair.glob("*.h5")))
    typer.echo(f"sha256 ok; h5 files in {pair}: {files}")
    typer.echo(f"use them with: --set data.source=tff-h5 --set data.path={pair}")
