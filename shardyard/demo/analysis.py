"""The analysis: one pure function per file, partial statistics, and their combine.

:func:`analyse_source` is used unchanged by the serial reference (:func:`serial_analysis`)
and by the shards (:class:`StdlibShard`), so both do exactly the same work and must agree.

What is counted, per top-level package (``json`` for ``json.decoder``, ``os`` for ``os``):
files, lines, bytes, files that failed to read or parse (``errors``), functions
(``FunctionDef`` + ``AsyncFunctionDef``), classes (``ClassDef``) and a histogram of AST node
types. Identifier frequencies are global and count every occurrence of: ``ast.Name`` ids,
function and class names, argument names (``ast.arg``) and attribute names
(``ast.Attribute.attr``). Import aliases and keyword-argument names are not counted.

Example:
    >>> s = analyse_source("pkg.mod", b"class A:\\n    def f(self, x):\\n        return x.y\\n")
    >>> p = s.packages["pkg"]
    >>> (p.files, p.lines, p.classes, p.functions)
    (1, 3, 1, 1)
    >>> sorted(s.identifiers.items())
    [('A', 1), ('f', 1), ('self', 1), ('x', 2), ('y', 1)]
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from shardyard.actors.shard import Shard

__all__ = [
    "Item",
    "PackageStats",
    "Stats",
    "StdlibShard",
    "analyse_source",
    "combine",
    "serial_analysis",
]

# Files whose ast.parse fails (Python 2 test data, deliberately bad syntax, NUL bytes, too
# deep nesting) are counted as errors of their package; anything else is a real bug.
_PARSE_ERRORS = (SyntaxError, ValueError, RecursionError, MemoryError)
_CONTEXT_NODES = frozenset({"Load", "Store", "Del"})


# --- the statistics ----------------------------------------------------------------------------


@dataclass
class PackageStats:
    """Counters of one top-level package.

    Attributes:
        files: ``.py`` files seen (parsed or not).
        lines: lines of those files.
        bytes: their size in bytes.
        errors: files that could not be read or parsed.
        functions: ``def`` and ``async def`` statements.
        classes: ``class`` statements.
        nodes: AST node type name -> occurrences.

    Example:
        >>> a = PackageStats(files=1, nodes=Counter({"Name": 2}))
        >>> a.merge(PackageStats(files=2, nodes=Counter({"Name": 1, "Call": 1})))
        >>> (a.files, a.nodes["Name"], a.top_node())
        (3, 3, 'Name')
    """

    files: int = 0
    lines: int = 0
    bytes: int = 0
    errors: int = 0
    functions: int = 0
    classes: int = 0
    nodes: Counter[str] = field(default_factory=Counter)

    def merge(self, other: PackageStats) -> None:
        """Add ``other``'s counters to this one, in place (``other`` is not changed)."""
        self.files += other.files
        self.lines += other.lines
        self.bytes += other.bytes
        self.errors += other.errors
        self.functions += other.functions
        self.classes += other.classes
        self.nodes.update(other.nodes)

    def copy(self) -> PackageStats:
        """An independent copy (the histogram is copied too)."""
        return PackageStats(
            self.files,
            self.lines,
            self.bytes,
            self.errors,
            self.functions,
            self.classes,
            Counter(self.nodes),
        )

    def top_node(self) -> str:
        """The most frequent node type, context markers aside; ``"-"`` when none.

        ``Load``/``Store``/``Del`` (which tag every name) would win everywhere, so they are
        left out here; they stay in :attr:`nodes`. Ties go to the smallest name.
        """
        counts = [kv for kv in self.nodes.items() if kv[0] not in _CONTEXT_NODES]
        if not counts:
            return "-"
        return min(counts, key=lambda kv: (-kv[1], kv[0]))[0]

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-able form (the histogram as a plain dict)."""
        return {
            "files": self.files,
            "lines": self.lines,
            "bytes": self.bytes,
            "errors": self.errors,
            "functions": self.functions,
            "classes": self.classes,
            "nodes": dict(self.nodes),
        }


@dataclass
class Stats:
    """The analysis of some files: per-package counters and global identifier frequencies.

    A partial for one file, for one shard and for the whole library all have this type;
    :func:`combine` merges two of them.

    Attributes:
        packages: top-level package name -> its :class:`PackageStats`.
        identifiers: identifier -> occurrences (see the module docstring for what counts).

    Example:
        >>> s = combine(analyse_source("a", b"x = 1"), analyse_source("b.c", b"x = y"))
        >>> (s.files, sorted(s.packages), s.identifiers["x"])
        (2, ['a', 'b'], 2)
    """

    packages: dict[str, PackageStats] = field(default_factory=dict)
    identifiers: Counter[str] = field(default_factory=Counter)

    @property
    def files(self) -> int:
        """Files across all packages."""
        return sum(p.files for p in self.packages.values())

    @property
    def errors(self) -> int:
        """Files that could not be read or parsed, across all packages."""
        return sum(p.errors for p in self.packages.values())

    def merge(self, other: Stats) -> Stats:
        """Add ``other`` into this one in place (``other`` is not changed); return ``self``."""
        mine = self.packages
        for name, pkg in other.packages.items():
            acc = mine.get(name)
            if acc is None:
                mine[name] = pkg.copy()
            else:
                acc.merge(pkg)
        # update() keeps every key (``+`` would drop non-positive counts) and adds in place.
        self.identifiers.update(other.identifiers)
        return self

    def copy(self) -> Stats:
        """An independent deep copy."""
        return Stats(
            {k: v.copy() for k, v in self.packages.items()},
            Counter(self.identifiers),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-able form; two analyses are equal exactly when these are equal."""
        return {
            "packages": {k: v.to_dict() for k, v in sorted(self.packages.items())},
            "identifiers": dict(self.identifiers),
        }

    def digest(self) -> str:
        """A short SHA-256 fingerprint of :meth:`to_dict` (independent of insertion order)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def combine(a: Stats, b: Stats) -> Stats:
    """Merge two partials into a new :class:`Stats`; associative and commutative, pure.

    Neither argument is changed: the shard actors pass their live state in, so an in-place
    merge into ``a`` would corrupt it. One copy of ``a``, then in-place ``update`` of ``b``.

    Example:
        >>> a, b = analyse_source("m", b"x = 1"), analyse_source("m", b"x = x")
        >>> combine(a, b).identifiers["x"], a.identifiers["x"]
        (3, 1)
    """
    return a.copy().merge(b)


# --- the analysis: one pure function, used serially and in the shards ---------------------------


def _count_lines(data: bytes) -> int:
    if not data:
        return 0
    return data.count(b"\n") + (0 if data.endswith(b"\n") else 1)


def analyse_source(module: str, source: bytes | str | os.PathLike[str]) -> Stats:
    """Analyse one module: parse it, walk its AST, count (a pure function of its input).

    Args:
        module: the module's dotted name; its first component names the package.
        source: the file's path (``str`` or path-like; read here), or its content as
            ``bytes`` (decoded as UTF-8, undecodable bytes replaced).

    Returns:
        A :class:`Stats` with one package. A file that cannot be read or parsed still
        counts as a file (with its lines and bytes, when read) and as an error.

    Example:
        >>> s = analyse_source("m", b"async def g(a, *b):\\n    await a.c(b)\\n")
        >>> s.packages["m"].functions, s.identifiers["a"], s.identifiers["c"]
        (1, 2, 1)
        >>> analyse_source("bad", b"def (:").packages["bad"].errors
        1
    """
    pkg = PackageStats(files=1)
    stats = Stats({module.partition(".")[0]: pkg})
    if isinstance(source, bytes):
        data = source
    else:
        try:
            with open(source, "rb") as f:
                data = f.read()
        except OSError:
            pkg.errors = 1
            return stats
    pkg.bytes = len(data)
    pkg.lines = _count_lines(data)
    try:
        with warnings.catch_warnings():
            # Invalid escape sequences in old files: noise, not errors.
            warnings.simplefilter("ignore")
            tree = ast.parse(data.decode("utf-8", errors="replace"), filename=module)
    except _PARSE_ERRORS:
        pkg.errors = 1
        return stats
    types: list[type] = []
    names: list[str] = []
    for node in ast.walk(tree):
        t = type(node)
        types.append(t)
        if t is ast.Name:
            names.append(node.id)  # type: ignore[attr-defined]
        elif t is ast.Attribute:
            names.append(node.attr)  # type: ignore[attr-defined]
        elif t is ast.arg:
            names.append(node.arg)  # type: ignore[attr-defined]
        elif t is ast.FunctionDef or t is ast.AsyncFunctionDef or t is ast.ClassDef:
            names.append(node.name)  # type: ignore[attr-defined]
    by_type = Counter(types)
    pkg.functions = by_type[ast.FunctionDef] + by_type[ast.AsyncFunctionDef]
    pkg.classes = by_type[ast.ClassDef]
    pkg.nodes = Counter({t.__name__: n for t, n in by_type.items()})
    stats.identifiers = Counter(names)
    return stats


Item = tuple[str, Any]  # (module, path str or source bytes): what travels to a shard


def _analyse_items(acc: Stats, items: Iterable[Item]) -> Stats:
    for module, source in items:
        acc.merge(analyse_source(module, source))
    return acc


class StdlibShard(Shard):
    """A shard that analyses its ``(module, path or bytes)`` items into one :class:`Stats`.

    Example:
        >>> s = StdlibShard()
        >>> s.setup(0)
        >>> s.process([("m", b"x = 1"), ("m", b"y = x")])
        >>> s.result().identifiers["x"]
        2
    """

    def setup(self, shard_id: int) -> None:
        """Start with empty statistics."""
        self.stats = Stats()

    def process(self, batch: Sequence[Item]) -> None:
        """Analyse each item and accumulate (outputs are all ``None``)."""
        _analyse_items(self.stats, batch)

    def result(self) -> Stats:
        """The statistics of every item this shard has seen."""
        return self.stats

    def snapshot(self) -> Any:
        """A deep copy: the live counters keep changing after the snapshot is taken."""
        return {"stats": self.stats.copy()}


def serial_analysis(items: Iterable[Item]) -> Stats:
    """The reference: the same per-item analysis, folded in this process.

    Example:
        >>> serial_analysis([("a", b"x = 1"), ("b", b"x = 2")]).identifiers["x"]
        2
    """
    return _analyse_items(Stats(), items)
