"""The one exception hierarchy of fl_core; every message says what failed, the
offending value, and what to do next. The CLI catches these (exit code 2).

Every error survives pickling intact (type, message, attributes): raised inside a Ray
trial or actor, it reaches the driver as itself, so the sweep can print its one line.
Python's default pickling rebuilds an exception by calling its class with `self.args`
(the one formatted message), which fails for classes whose `__init__` takes several
parts; `__reduce__` here rebuilds without calling `__init__` at all.

Every FLCoreError is deterministic: the same input fails the same way on every try
(`transient = False`), so a sweep does not retry a trial that raised one.
"""

from __future__ import annotations

from typing import Any, ClassVar, Iterable


def rebuild_error(cls: type[BaseException], args: tuple, state: dict[str, Any]) -> BaseException:
    """Unpickle an exception without calling its `__init__` (see the module docstring)."""
    err = cls.__new__(cls, *args)
    err.args = args
    err.__dict__.update(state)
    return err


class PicklableError(Exception):
    """An exception whose pickle holds its class, message args and attributes, whatever
    its `__init__` takes. Base of FLCoreError and of the sweeper's SweeperError."""

    def __reduce__(self):
        return (rebuild_error, (type(self), self.args, dict(self.__dict__)))


class FLCoreError(PicklableError):
    """Base of every error fl_core raises on purpose."""

    #: whether retrying the same input may succeed (False: a bad config or data set fails
    #: again, so a sweep does not retry the trial)
    transient: ClassVar[bool] = False


class ConfigError(FLCoreError):
    """A config value is invalid. `path` is the dotted key (e.g. `attack.fraction`)."""

    def __init__(self, path: str, value: object, allowed: str, source: str | None = None):
        self.path, self.value, self.allowed, self.source = path, value, allowed, source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}invalid value for `{path}`: {value!r}; allowed: {allowed}")


class UnknownKeyError(ConfigError):
    """A config key that does not exist (misspelt, or not a parameter of the chosen
    plug-in): a ConfigError whose `allowed` lists the keys there are. Kept apart from a
    bad value of a known key, so that callers name the two differently."""


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
