"""``shardyard demo``: analyse the running interpreter's standard library on shard actors.

Every ``.py`` file under ``sysconfig.get_paths()["stdlib"]`` (``site-packages`` skipped) is
one item, keyed by its module's dotted name (``json.decoder``, ``test.test_os``) so that big
packages spread over all shards instead of pinning one (``test`` alone is half the bytes).
A stateful :class:`StdlibShard` parses its files (``ast.parse`` + ``ast.walk``, CPU-bound)
and accumulates a :class:`Stats`; the driver combines the shards' partials with
``pool.reduce(combine)`` and checks the result against the same analysis run serially in
the driver (:func:`serial_analysis`, the same :func:`analyse_source` on the same items).

Items are ``(module, path)`` pairs: the actor reads the file itself, so only two short
strings travel per file. That needs the same files on every worker: on one machine, or on a
remote cluster (``--address``) whose nodes have the same Python install at the same path.
Otherwise ``ship_source=True`` (``--ship-source``) sends ``(module, file bytes)`` instead.

Modules: :mod:`~shardyard.demo.analysis` (the pure analysis and its combine),
:mod:`~shardyard.demo.files` (finding the files), :mod:`~shardyard.demo.run` (the pool,
the baseline and the report).

Example:
    >>> from shardyard.demo import analyse_source, combine
    >>> s = combine(analyse_source("a", b"x = 1"), analyse_source("b.c", b"x = y"))
    >>> (s.files, sorted(s.packages), s.identifiers["x"])
    (2, ['a', 'b'], 2)
"""

from shardyard.demo.analysis import (
    Item,
    PackageStats,
    Stats,
    StdlibShard,
    analyse_source,
    combine,
    serial_analysis,
)
from shardyard.demo.files import SourceFile, discover_files, module_name, weighted_boundaries
from shardyard.demo.run import DemoReport, run_demo

__all__ = [
    "DemoReport",
    "Item",
    "PackageStats",
    "SourceFile",
    "Stats",
    "StdlibShard",
    "analyse_source",
    "combine",
    "discover_files",
    "module_name",
    "run_demo",
    "serial_analysis",
    "weighted_boundaries",
]
