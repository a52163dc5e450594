"""Running the demo: the pool, the serial baseline, the comparison and the report.

Example:
    >>> report = run_demo(limit=20, progress=False)       # doctest: +SKIP
    >>> report.match                                       # doctest: +SKIP
    True
"""

from __future__ import annotations

import json
import sys
import sysconfig
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from shardyard.demo.analysis import Item, Stats, StdlibShard, combine, serial_analysis
from shardyard.demo.files import discover_files, weighted_boundaries

__all__ = ["DemoReport", "run_demo"]


# --- the demo ------------------------------------------------------------------------------------


@dataclass
class DemoReport:
    """What :func:`run_demo` measured.

    Attributes:
        files: files analysed.
        wall_s: seconds of the parallel run (map + reduce, actors already started).
        startup_s: seconds to connect and start the actors (not part of ``wall_s``).
        serial_s: seconds of the serial baseline (``None`` when skipped).
        match: whether the parallel result equals the serial one (``None`` when skipped).
        stats: the combined result of the parallel run.
    """

    files: int
    wall_s: float
    startup_s: float
    serial_s: float | None
    match: bool | None
    stats: Stats

    @property
    def speedup(self) -> float | None:
        """``serial_s / wall_s``, or ``None`` without a baseline."""
        if self.serial_s is None or self.wall_s <= 0:
            return None
        return self.serial_s / self.wall_s

    def to_json(self) -> str:
        """One JSON line: files, wall_s, serial_s, speedup, match (and a few more)."""
        speedup = self.speedup
        return json.dumps(
            {
                "files": self.files,
                "wall_s": round(self.wall_s, 3),
                "serial_s": None if self.serial_s is None else round(self.serial_s, 3),
                "speedup": None if speedup is None else round(speedup, 3),
                "match": self.match,
                "startup_s": round(self.startup_s, 3),
                "parse_errors": self.stats.errors,
                "digest": self.stats.digest(),
            }
        )


def _table(stats: Stats, top_packages: int) -> list[str]:
    rows = sorted(stats.packages.items(), key=lambda kv: (-kv[1].lines, kv[0]))[:top_packages]
    width = max([7, *(min(len(name), 28) for name, _ in rows)])
    out = [
        f"{'package':<{width}} {'files':>6} {'lines':>9} {'functions':>9} {'classes':>7}  top node"
    ]
    for name, p in rows:
        shown = name if len(name) <= 28 else name[:27] + "…"
        out.append(
            f"{shown:<{width}} {p.files:>6} {p.lines:>9} {p.functions:>9} {p.classes:>7}"
            f"  {p.top_node()}"
        )
    return out


def _top_identifiers(stats: Stats, n: int) -> list[str]:
    top = sorted(stats.identifiers.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
    width = max((len(k) for k, _ in top), default=0)
    return [f"{i:>3}. {k:<{width}} {v:>8}" for i, (k, v) in enumerate(top, 1)]


def _load_table(pool_stats: Any) -> list[str]:
    out = ["actor  pid       shards  items  batches   busy_s"]
    for a in pool_stats.actors:
        shards = [pool_stats.shards[s] for s in a.shards]
        out.append(
            f"{a.actor:>5}  {a.pid!s:<8}  {len(shards):>6}  {sum(s.items for s in shards):>5}  "
            f"{sum(s.batches for s in shards):>7}  {sum(s.busy_s for s in shards):>7.2f}"
        )
    per_shard = sorted(s.items for s in pool_stats.shards)
    if per_shard:
        out.append(
            f"items per shard: min {per_shard[0]}, median {per_shard[len(per_shard) // 2]}, "
            f"max {per_shard[-1]} over {len(per_shard)} shards"
        )
    return out


def run_demo(
    *,
    address: str | None = None,
    actors: int | None = None,
    shards: int | None = None,
    strategy: str = "jump",
    batch_size: int = 8,
    limit: int | None = None,
    baseline: bool = True,
    ship_source: bool = False,
    progress: bool = True,
    root: str | None = None,
    out: TextIO | None = None,
) -> DemoReport:
    """Analyse the standard library on a :class:`~shardyard.ShardPool`; print a report.

    Ray must be connected (or is connected on first use with ``address``); disconnecting is
    left to the caller.

    Args:
        address: Ray address (``None``: embedded local Ray).
        actors: shard actors (default: the cluster's CPUs).
        shards: logical shards (default: the pool's, 8 per actor).
        strategy: key -> shard strategy name.
        batch_size: the pool's ``max_batch_size``; files are big items, so small batches
            balance better.
        limit: analyse only the first ``limit`` files (sorted by path).
        baseline: also run the analysis serially here, time it and compare the results.
        ship_source: send file contents instead of paths (for workers without the files).
        progress: show a progress bar (on stderr).
        root: library directory (default: this interpreter's stdlib).
        out: where to print (default: stdout).

    Returns:
        A :class:`DemoReport`.

    Example:
        >>> report = run_demo(limit=20, baseline=True, progress=False)  # doctest: +SKIP
        >>> report.match                                                 # doctest: +SKIP
        True
    """
    from shardyard.scheduler.pool import ShardPool

    stream = out if out is not None else sys.stdout

    def say(line: str = "") -> None:
        print(line, file=stream, flush=True)

    files = discover_files(root, limit)
    # Largest first: the long files start early and the tail is made of short ones.
    ordered = sorted(files, key=lambda f: (-f.size, f.path))
    total_bytes = sum(f.size for f in files)
    say(
        f"shardyard demo: {len(files)} stdlib files, {total_bytes / 1e6:.1f} MB "
        f"(Python {sys.version.split()[0]}, {root or sysconfig.get_paths()['stdlib']})"
    )

    t0 = time.perf_counter()
    options: dict[str, Any] = {}
    if strategy == "range":
        # Fit the boundaries to the files' line counts, so every shard gets as much to parse.
        import ray

        from shardyard.cluster import connect

        connect(address)
        actors = actors or max(1, int(ray.cluster_resources().get("CPU", 1)))
        shards = shards or 8 * actors
        lines = [Path(f.path).read_bytes().count(b"\n") + 1 for f in files]
        options["boundaries"] = weighted_boundaries(files, shards, weights=lines)
    pool = ShardPool(
        StdlibShard,
        num_actors=actors,
        num_shards=shards,
        strategy=strategy,
        strategy_options=options,
        address=address,
        max_batch_size=batch_size,
    )
    try:
        pool.start()
        startup_s = time.perf_counter() - t0
        say(
            f"pool: {pool.num_actors} actors, {pool.num_shards} shards, strategy {strategy}, "
            f"batches of <= {batch_size} files, items = "
            + ("file contents (--ship-source)" if ship_source else "file paths")
            + f"; started in {startup_s:.2f} s"
        )
        t1 = time.perf_counter()
        if ship_source:
            items: Iterable[Item] = ((f.module, Path(f.path).read_bytes()) for f in ordered)
            items = _Sized(items, len(ordered))
        else:
            items = [(f.module, f.path) for f in ordered]
        pool.map(items, keys=[f.module for f in ordered], progress=progress)
        parallel: Stats = pool.reduce(combine)
        wall_s = time.perf_counter() - t1
        load = pool.stats()
    finally:
        pool.close()

    serial_s: float | None = None
    serial_cpu_s = 0.0
    match: bool | None = None
    difference = ""
    if baseline:
        t2, c2 = time.perf_counter(), time.process_time()
        # The same items in the same order, so the serial run does exactly the same work.
        serial = serial_analysis((f.module, f.path) for f in ordered)
        serial_s = time.perf_counter() - t2
        serial_cpu_s = time.process_time() - c2
        # Full structures: every package's counters and histogram, every identifier count.
        match = serial.to_dict() == parallel.to_dict()
        difference = "" if match else _diff(parallel, serial)

    report = DemoReport(len(files), wall_s, startup_s, serial_s, match, parallel)
    say()
    say(f"top identifiers ({len(parallel.identifiers)} distinct):")
    for line in _top_identifiers(parallel, 15):
        say(line)
    say()
    say(f"packages by lines (top 12 of {len(parallel.packages)}):")
    for line in _table(parallel, 12):
        say(line)
    say()
    say("load per actor:")
    for line in _load_table(load):
        say(line)
    say()
    say(f"files {report.files}, parse errors {parallel.errors}, result digest {parallel.digest()}")
    say(f"parallel: {wall_s:.2f} s wall ({startup_s:.2f} s actor start-up not included)")
    if serial_s is not None and report.speedup is not None:
        # CPU well below wall time means other processes competed for the cores.
        say(
            f"serial:   {serial_s:.2f} s in the driver (CPU {serial_cpu_s:.2f} s); "
            f"speedup {report.speedup:.2f}x"
        )
    if match is None:
        say("result check skipped (--no-baseline)")
    elif match:
        say("MATCH: parallel result equals the serial one")
    else:
        say(f"MISMATCH: parallel result differs from the serial one: {difference}")
    return report


class _Sized:
    """An iterator with a length, so the progress bar knows its total without reading it."""

    def __init__(self, it: Iterable[Any], n: int) -> None:
        self._it = iter(it)
        self._n = n

    def __iter__(self) -> Any:
        return self._it

    def __len__(self) -> int:
        return self._n


def _diff(a: Stats, b: Stats) -> str:
    """A short description of where two analyses differ."""
    pa, pb = a.to_dict()["packages"], b.to_dict()["packages"]
    if set(pa) != set(pb):
        return f"packages only on one side: {sorted(set(pa) ^ set(pb))[:10]}"
    for name in pa:
        if pa[name] != pb[name]:
            fields = [k for k in pa[name] if pa[name][k] != pb[name][k]]
            return f"package {name!r} differs in {fields}"
    ia, ib = dict(a.identifiers), dict(b.identifiers)
    keys = sorted(k for k in set(ia) | set(ib) if ia.get(k) != ib.get(k))
    return f"{len(keys)} identifier counts differ, e.g. {keys[:10]}"
