"""Errors the sweeper raises on purpose; the CLI prints one line and exits 2.

Like fl_core's errors they pickle intact whatever their `__init__` takes
(`fl_core.errors.PicklableError`), so one raised in a Ray trial reaches the driver as
itself. `transient` says whether retrying the same input may succeed: only then does a
sweep retry the trial that raised it.
"""

from __future__ import annotations

from typing import ClassVar

from fl_core.errors import PicklableError


class SweeperError(PicklableError):
    """Base of the sweeper's errors."""

    transient: ClassVar[bool] = False


class GridError(SweeperError):
    """A grid file is invalid: names the file, the key and what is allowed."""

    def __init__(self, file: str, key: str, reason: str):
        self.file, self.key, self.reason = file, key, reason
        super().__init__(f"{file}: `{key}`: {reason}")


class TrackingError(SweeperError):
    """The MLflow store cannot be reached or written (a server may come back)."""

    transient = True

    def __init__(self, uri: str, reason: str):
        self.uri, self.reason = uri, reason
        super().__init__(f"MLflow store {uri}: {reason}")
