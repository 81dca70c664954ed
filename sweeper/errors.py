"""Errors the sweeper raises on purpose; the CLI prints one line and exits 2."""

from __future__ import annotations


class SweeperError(Exception):
    """Base of the sweeper's errors."""


class GridError(SweeperError):
    """A grid file is invalid: names the file, the key and what is allowed."""

    def __init__(self, file: str, key: str, reason: str):
        self.file, self.key, self.reason = file, key, reason
        super().__init__(f"{file}: `{key}`: {reason}")


class TrackingError(SweeperError):
    """The MLflow store cannot be reached or written."""

    def __init__(self, uri: str, reason: str):
        self.uri, self.reason = uri, reason
        super().__init__(f"MLflow store {uri}: {reason}")
