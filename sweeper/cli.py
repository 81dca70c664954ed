"""`fl-sweep`: the command line. Commands live in their own modules and are registered
here; user errors (FLCoreError, SweeperError) print one line to stderr and exit 2."""

from __future__ import annotations

import sys
import warnings

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


def _config_notes() -> None:
    """A config in an old shape loads, mapped to the current one, with a one-line note
    (once per distinct note: a report over 189 old exports prints it once). fl_core warns
    with a DeprecationWarning subclass, which Python hides by default."""
    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if category.__name__ == "DeprecatedConfigWarning":  # by name: no fl_core.config import here
            print(f"fl-sweep: note: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    warnings.filterwarnings("once", message="deprecated flat attack keys")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `fl-sweep` console script."""
    _config_notes()
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
