"""Every exception class of fl_core and sweeper pickles and unpickles intact: the same
type, message, args and attributes. Ray pickles an error raised in a trial or actor to
hand it to the driver; an error that cannot be rebuilt there (e.g. a ConfigError, whose
`__init__` takes four parts, rebuilt by Python's default from its one message) turns into
`TypeError: __init__() missing ... arguments` and the user's one-line message is lost.

The classes are found by importing every module of both packages, so a new error class
is covered without touching this test."""

from __future__ import annotations

import importlib
import inspect
import pickle
import pkgutil

import pytest

import fl_core
import sweeper


def _error_classes() -> list[type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for pkg in (fl_core, sweeper):
        for mod in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            if mod.name.endswith("__main__"):
                continue  # runs the CLI
            module = importlib.import_module(mod.name)
            for obj in vars(module).values():
                if (inspect.isclass(obj) and issubclass(obj, BaseException)
                        and obj.__module__ == module.__name__):
                    found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return [found[k] for k in sorted(found)]


CLASSES = _error_classes()


def _instance(cls: type[BaseException]) -> BaseException:
    """`cls` built with a distinct value for every parameter of its `__init__`."""
    if cls.__init__ is BaseException.__init__:
        return cls(f"message of {cls.__name__}")
    params = [p for p in list(inspect.signature(cls.__init__).parameters.values())[1:]
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return cls(*(f"{p.name} of {cls.__name__}" for p in params))


def test_the_walk_finds_the_error_classes():
    names = {c.__name__ for c in CLASSES}
    assert {"FLCoreError", "ConfigError", "UnknownKeyError", "DatasetError", "CheckpointError",
            "CheckpointMismatchError", "UnknownComponentError", "DivergedError",
            "SweeperError", "GridError", "TrackingError", "JsonlError", "ReportError"} <= names


@pytest.mark.parametrize("cls", CLASSES, ids=[f"{c.__module__}.{c.__qualname__}" for c in CLASSES])
def test_error_survives_pickling_intact(cls):
    err = _instance(cls)
    err.extra_note = "set after construction"  # attributes beyond __init__'s travel too
    for dump in (pickle.dumps, __import__("cloudpickle").dumps):  # the stdlib's and Ray's
        back = pickle.loads(dump(err))
        assert type(back) is cls
        assert str(back) == str(err) and back.args == err.args
        assert vars(back) == vars(err)


def test_a_config_error_keeps_its_parts_across_pickling():
    from fl_core.errors import ConfigError

    err = ConfigError("attack.fraction", 1.5, "a number in (0, 1)", source="grid.yaml")
    back = pickle.loads(pickle.dumps(err))
    assert (back.path, back.value, back.allowed, back.source) == ("attack.fraction", 1.5, "a number in (0, 1)",
                                                                  "grid.yaml")
    assert str(back) == "grid.yaml: invalid value for `attack.fraction`: 1.5; allowed: a number in (0, 1)"
