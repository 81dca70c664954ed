"""`fl-sweep`: the command line. Commands live in their own modules and are registered
here; user errors (FLCoreError, SweeperError) print one line to stderr and exit 2."""

from __future__ import annotations

import sys

import typer

from fl_core.errors import FLCoreError
from sweeper.errors import SweeperError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    help="Backdoor attacks and defenses in federated learning: simulate, sweep, report.",
)

# Command modules register themselves on `app` (sweeper/cmd_*.py).
from sweeper import cmd_simulate  # noqa: E402,F401
from sweeper import cmd_data  # noqa: E402,F401
from sweeper import cmd_sweep  # noqa: E402,F401
from sweeper import cmd_report  # noqa: E402,F401


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `fl-sweep` console script."""
    try:
        rc = app(args=argv, standalone_mode=False)
    except (FLCoreError, SweeperError) as e:
        print(f"fl-sweep: error: {e}", file=sys.stderr)
        return 2
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        print("fl-sweep: aborted", file=sys.stderr)
        return 130
    except Exception as e:
        # Usage errors (bad option, missing argument): typer ≥ 0.29 vendors its own click,
        # so match the ClickException interface rather than a class.
        if hasattr(e, "show") and isinstance(getattr(e, "exit_code", None), int):
            e.show()
            return e.exit_code
        raise
    return rc if isinstance(rc, int) else 0


if __name__ == "__main__":
    sys.exit(main())
