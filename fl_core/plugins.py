"""One registry shape for every plug-in family (attacks, aggregators, backdoor tasks).

A plug-in module registers a spec under its name at import; the family's package imports
every module in it (`import_all`), so adding a component is one file. The registry is a
read-only mapping name → spec, and `spec_for` turns an unknown name into a ConfigError that
names the config key, suggests the closest name and lists the registered ones.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from fl_core.errors import ConfigError, UnknownKeyError

S = TypeVar("S")


class Params(BaseModel):
    """Base of every plug-in's own parameters: frozen, unknown keys refused, no NaN/inf,
    strict types (as `fl_core.config`'s models: Krum's `f: true` or `f: "1"` is refused,
    an integer for a float parameter is taken)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False, strict=True)


class Registry(Mapping[str, S], Generic[S]):
    """Name → spec of one plug-in family.

    Args:
        family: what the specs are ("attack"), for messages.
        key: the config key that names one (`attack.kind`), for errors.
    """

    def __init__(self, family: str, key: str):
        self.family = family
        self.key = key
        self._specs: dict[str, S] = {}

    def register(self, spec: S) -> S:
        name = spec.name  # type: ignore[attr-defined]
        if name in self._specs:
            raise ValueError(f"{self.family} {name!r} registered twice")
        self._specs[name] = spec
        return spec

    def unregister(self, name: str) -> S:
        """Remove `name` (a test's own plug-in, registered for the test only)."""
        return self._specs.pop(name)

    def spec_for(self, name: object) -> S:
        """The spec registered as `name`, else a ConfigError on `self.key` with a did-you-mean."""
        if isinstance(name, str) and name in self._specs:
            return self._specs[name]
        near = difflib.get_close_matches(str(name), list(self._specs), n=1, cutoff=0.5)
        hint = f"did you mean `{near[0]}`? " if near else ""
        raise ConfigError(self.key, name, f"{hint}one of: {', '.join(sorted(self._specs))}")

    def __getitem__(self, name: str) -> S:
        return self._specs[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)


def import_all(package: str, path: Iterable[str], skip: tuple[str, ...] = ("base",)) -> None:
    """Import every module of `package` (its `__path__`) except `skip`: each registers itself."""
    for mod in sorted(m.name for m in pkgutil.iter_modules(path)):
        if mod not in skip:
            importlib.import_module(f"{package}.{mod}")


def validate_params(where: str, name: str, model: type[BaseModel], params: Any) -> dict[str, Any]:
    """A plug-in's parameter mapping validated by its own model (defaults filled in, did-you-
    mean for unknown keys), as plain JSON values."""
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        raise ConfigError(where, params, f"a mapping of {name}'s parameters")
    fields = model.model_fields

    def described() -> str:
        if not fields:
            return f"{name} takes no parameters"
        return f"parameters of {name}: " + "; ".join(f"{k} ({f.description})" for k, f in fields.items())

    for key in params:
        if key not in fields:
            near = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.5)
            hint = f"did you mean `{near[0]}`? " if near else ""
            raise UnknownKeyError(f"{where}.{key}", params[key], f"{hint}{described()}")
    try:
        return model.model_validate(dict(params)).model_dump(mode="json")
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        desc = fields[key].description if key in fields else ""
        raise ConfigError(f"{where}.{key}" if key else where, err.get("input"),
                          f"{err['msg']} ({desc})" if desc else err["msg"]) from None
