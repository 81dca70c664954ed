"""The one YAML reader of the sweeper: grid files, `fl-sweep simulate --config`, and every
config.yaml read back (a run directory being resumed, an exported run being reported or
exported again: sweeper.report.load).

A YAML file is user input and may be hostile or broken. This reader bounds what it
costs before anything else sees the data:

- the file must be UTF-8 text of at most MAX_BYTES (a binary or Latin-1 file is named
  as such, not a traceback);
- only plain YAML (SafeLoader: no Python tags), and each mapping key at most once (a
  repeated grid axis silently dropping the first is an expensive mistake);
- nesting at most MAX_DEPTH levels (PyYAML's composer recurses: 3,000 levels would end
  in a RecursionError);
- aliases are counted as what they expand to: a 650-byte "billion laughs" file is a
  few nodes for PyYAML but 10^9 for whatever walks the result (pydantic, repr, JSON).
  The expanded size (nodes and scalar characters) is computed on the composed node
  graph, before a single Python object is built, and refused above MAX_NODES / MAX_CHARS.

Every problem is a GridError naming the file: exit 2. The file is read as a regular file
only (fl_core.safeio.read_bytes: a FIFO would block). `short()` (fl_core.safeio's) caps how
much of a value an error message shows, so no error line is megabytes long.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from fl_core import safeio
from fl_core.safeio import short  # noqa: F401 (re-exported: the one capped repr)
from sweeper.errors import GridError

MAX_BYTES = 1 << 20          # a grid or config file is a few KiB; 1 MiB is generous
MAX_DEPTH = 64               # configs nest 3 levels; grids 4
MAX_NODES = 100_000          # expanded YAML nodes (mappings, lists, scalars)
MAX_CHARS = 4 * MAX_BYTES    # expanded scalar characters

class _Shown:
    """A value whose repr is `short(value)`: lets errors that format `{value!r}` (fl_core's
    ConfigError) print a capped value."""

    def __init__(self, value: Any):
        self.value = value

    def __repr__(self) -> str:
        return short(self.value)


def capped(value: Any) -> Any:
    """`value` itself if short, else a stand-in whose repr is capped."""
    if isinstance(value, (bool, int, float, type(None))):
        return value
    return _Shown(value)


class _TooBig(yaml.YAMLError):
    def __init__(self, problem: str, mark: Any = None):
        super().__init__(problem)
        self.problem, self.problem_mark = problem, mark


class BoundedLoader(yaml.SafeLoader):
    """SafeLoader with bounded depth and expansion and no duplicate keys."""

    def __init__(self, stream: Any):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _TooBig(f"nested more than {MAX_DEPTH} levels deep", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def get_single_node(self) -> Any:
        node = super().get_single_node()
        if node is not None:
            _check_expansion(node)
        return node


def _check_expansion(root: yaml.Node) -> None:
    """Expanded node and character counts of the node graph (aliases share nodes, so the
    graph is a DAG): memoised per node, so this costs the file's size, not the expansion's."""
    memo: dict[int, tuple[int, int]] = {}

    def size(node: yaml.Node) -> tuple[int, int]:
        got = memo.get(id(node))
        if got is not None:
            return got
        if isinstance(node, yaml.ScalarNode):
            out = (1, len(node.value))
        else:
            children = node.value if isinstance(node, yaml.SequenceNode) else [
                x for pair in node.value for x in pair]
            n, c = 1, 0
            for child in children:
                cn, cc = size(child)
                n, c = n + cn, c + cc
                if n > MAX_NODES or c > MAX_CHARS:
                    raise _TooBig(
                        f"expands to more than {MAX_NODES:,} values or {MAX_CHARS:,} characters "
                        "(anchors/aliases repeated inside each other?); grid and config files "
                        "are small", node.start_mark)
            out = (n, c)
        memo[id(node)] = out
        return out

    size(root)


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False):
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            dup = key in seen
            seen.add(key)
        except TypeError:  # an unhashable key: let SafeLoader report it
            dup = False
        if dup:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {short(key)}", key_node.start_mark)
    return loader.construct_mapping(node, deep=deep)


BoundedLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
# YAML 1.1 (PyYAML) reads `1e-3` and `1e300` as strings (its floats need a dot); the
# config's strict types would then refuse them. Read them as the floats a user means
# (YAML 1.2 does); a quoted '1e-3' stays a string.
BoundedLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def _mark(mark: Any) -> str:
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


def read_text(path: str | Path) -> str:
    """The file's text: a regular file (a FIFO would block), UTF-8, at most MAX_BYTES;
    else a GridError naming the file."""
    file = str(path)

    def error(f: str, problem: str) -> GridError:
        return GridError(f, "(file)", problem)

    try:
        data = safeio.read_bytes(path, max_bytes=MAX_BYTES, error=error,
                                 what="a grid or config file (small YAML files)")
    except FileNotFoundError:
        raise GridError(file, "(file)", "no such file; give the path of a YAML file") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise GridError(
            file, "(file)",
            f"not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); is it a binary "
            "file? save YAML as UTF-8",
        ) from None


def parse(text: str, file: str) -> Any:
    """Parse YAML text with BoundedLoader; any problem is a GridError naming `file`."""
    try:
        return yaml.load(text, Loader=BoundedLoader)  # noqa: S506 (a SafeLoader subclass)
    except _TooBig as e:
        raise GridError(file, "(yaml)", f"{e.problem}{_mark(e.problem_mark)}") from None
    except yaml.constructor.ConstructorError as e:
        where = _mark(e.problem_mark)
        if e.problem and "duplicate key" in e.problem:
            raise GridError(file, "(yaml)", f"{e.problem}{where}; each key may appear once") from None
        raise GridError(
            file, "(yaml)",
            f"unsupported YAML tag{where} ({e.problem}); only plain YAML is allowed: "
            "mappings, lists, strings, numbers, booleans, null",
        ) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise GridError(file, "(yaml)", f"not valid YAML{_mark(mark)}: {problem}") from None
    except RecursionError:  # belt and braces: MAX_DEPTH should stop it first
        raise GridError(file, "(yaml)", "nested too deeply") from None


def read_yaml(path: str | Path) -> tuple[Any, str]:
    """(parsed data, text) of a YAML file, bounded as described in the module docstring."""
    text = read_text(path)
    return parse(text, str(path)), text
