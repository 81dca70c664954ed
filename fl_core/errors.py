"""The one exception hierarchy of fl_core; every message says what failed, the
offending value, and what to do next. The CLI catches these (exit code 2)."""

from __future__ import annotations

from typing import Iterable


class FLCoreError(Exception):
    """Base of every error fl_core raises on purpose."""


class ConfigError(FLCoreError):
    """A config value is invalid. `path` is the dotted key (e.g. `attack.fraction`)."""

    def __init__(self, path: str, value: object, allowed: str, source: str | None = None):
        self.path, self.value, self.allowed, self.source = path, value, allowed, source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}invalid value for `{path}`: {value!r}; allowed: {allowed}")


class UnknownComponentError(FLCoreError):
    """A plug-in (attack, defense, data source, backend) name is not registered."""

    def __init__(self, kind: str, name: str, available: Iterable[str]):
        self.kind, self.name, self.available = kind, name, sorted(available)
        super().__init__(
            f"unknown {kind} {name!r}; available: {', '.join(self.available)}"
        )


class CheckpointMismatchError(FLCoreError):
    """A checkpoint does not belong to this config (hash or schema version differ)."""

    def __init__(self, expected: str, found: str, remedy: str):
        self.expected, self.found, self.remedy = expected, found, remedy
        super().__init__(f"checkpoint {found} does not match {expected}; {remedy}")


class CheckpointError(FLCoreError):
    """A checkpoint file is empty, truncated or not a checkpoint at all."""

    def __init__(self, path: str, problem: str):
        self.path, self.problem = path, problem
        super().__init__(
            f"checkpoint {path}: {problem}; restore it from a copy, or start the run again "
            "without --resume (into a new or --force'd output directory)"
        )


class DatasetError(FLCoreError):
    """A data source is missing or malformed."""

    def __init__(self, path: str, missing: str, how_to_prepare: str):
        self.path, self.missing, self.how_to_prepare = path, missing, how_to_prepare
        super().__init__(f"dataset at {path}: {missing}; {how_to_prepare}")


class DivergedError(FLCoreError):
    """The global model became NaN/inf: the run stops with status `diverged`."""

    def __init__(self, round_num: int, what: str = "global weights"):
        self.round_num = round_num
        super().__init__(
            f"diverged: {what} became NaN/inf in round {round_num}; "
            "lower fl.client_lr / fl.server_lr or set defense.norm_bound"
        )
