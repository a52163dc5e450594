"""Throughput against the number of shards and of actors: cost should grow with items only.

Everything runs in one process on one embedded local Ray (``shardyard.connect()``, 2 CPUs).
Each case maps 200k int items (``np.arange``) with the handler ``lambda x: x + 1``: one
warm-up map, then the best of 3 timed maps, every output checked. The pool is started
before the warm-up and closed before the next case starts.

Cases:

(a) keyed (``keys=items``), 2 actors, ``num_shards`` 16, 256, 1024, 4096: items/s of
    each and its ratio to the 16-shard rate. Target: 4096 shards >= 0.8x 16 shards (with
    every shard busy, a shard should cost nothing per call beyond its items).
(b) keyed, ``num_actors`` 2, 8, 32 (``num_shards`` = 8 per actor, the pool's default) on
    the 2 cores: ratio to the 2-actor rate. Target: 32 actors >= 0.7x 2 actors.
(c) keyless (``keys=None``), 2 actors, the shard counts of (a): ratio to 16 shards, for
    information (no target).

Prints a table (case | items/s | ratio | target | ok) and, last, one JSON line with every
number, ratio and target boolean. The table and the JSON line are also written to
``benchmarks/results/shards.txt`` and ``benchmarks/results/shards.json``.

Run:
    python benchmarks/shards.py [--items N] [--repeats R] [--quick]
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import time
from pathlib import Path

import numpy as np
import ray

import shardyard
from shardyard import ClusterConfig, ShardPool

RESULTS = Path(__file__).resolve().parent / "results"
NUM_CPUS = 2
SHARD_COUNTS = [16, 256, 1024, 4096]
ACTOR_COUNTS = [2, 8, 32]
SHARDS_PER_ACTOR = 8
SHARDS_TARGET = 0.8  # 4096 shards over 16 shards (keyed, 2 actors)
ACTORS_TARGET = 0.7  # 32 actors over 2 actors (keyed, 2 cores)


def measure(num_actors: int, num_shards: int, keyed: bool, n: int, repeats: int) -> float:
    """Best items/s of ``repeats`` maps of ``n`` items after one warm-up map."""
    items = np.arange(n, dtype=np.int64)
    expected = items + 1
    keys = items if keyed else None
    pool = ShardPool(lambda x: x + 1, num_actors=num_actors, num_shards=num_shards).start()
    try:

        def run() -> None:
            out = pool.map(items, keys=keys)
            assert np.array_equal(np.asarray(out), expected), "wrong outputs"

        run()  # warm-up
        best = float("inf")
        for _ in range(repeats):
            gc.collect()
            t0 = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - t0)
    finally:
        pool.close()
    return n / best


def fmt_rate(x: float) -> str:
    return f"{x / 1000:,.1f}k/s"


def table(rows: list[tuple[str, str, str, str, str]]) -> str:
    header = ("case", "items/s", "ratio", "target", "ok")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    out = [line, "-" * len(line)]
    out += [" | ".join(x.ljust(w) for x, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=200_000, help="items per map (200000)")
    parser.add_argument("--repeats", type=int, default=3, help="timed maps, best kept (3)")
    parser.add_argument("--quick", action="store_true", help="20k items, 2 repeats")
    parser.add_argument("--no-save", action="store_true", help="do not write results/")
    args = parser.parse_args(argv)
    n, repeats = (20_000, 2) if args.quick else (args.items, args.repeats)

    info = shardyard.connect(config=ClusterConfig(num_cpus=NUM_CPUS))
    t_start = time.perf_counter()
    keyed = {s: measure(2, s, True, n, repeats) for s in SHARD_COUNTS}
    actors = {a: measure(a, SHARDS_PER_ACTOR * a, True, n, repeats) for a in ACTOR_COUNTS}
    keyless = {s: measure(2, s, False, n, repeats) for s in SHARD_COUNTS}
    wall = time.perf_counter() - t_start

    shards_ratio = keyed[SHARD_COUNTS[-1]] / keyed[SHARD_COUNTS[0]]
    actors_ratio = actors[ACTOR_COUNTS[-1]] / actors[ACTOR_COUNTS[0]]
    targets = {
        f"keyed_{SHARD_COUNTS[-1]}_shards_ge_{SHARDS_TARGET}x": shards_ratio >= SHARDS_TARGET,
        f"keyed_{ACTOR_COUNTS[-1]}_actors_ge_{ACTORS_TARGET}x": actors_ratio >= ACTORS_TARGET,
    }
    ok = lambda b: "yes" if b else "NO"  # noqa: E731
    rows: list[tuple[str, str, str, str, str]] = []
    for s in SHARD_COUNTS:
        last = s == SHARD_COUNTS[-1]
        rows.append(
            (
                f"(a) keyed, 2 actors, {s} shards",
                fmt_rate(keyed[s]),
                f"{keyed[s] / keyed[SHARD_COUNTS[0]]:.2f}x",
                f">= {SHARDS_TARGET}x" if last else "",
                ok(shards_ratio >= SHARDS_TARGET) if last else "",
            )
        )
    for a in ACTOR_COUNTS:
        last = a == ACTOR_COUNTS[-1]
        rows.append(
            (
                f"(b) keyed, {a} actors, {SHARDS_PER_ACTOR * a} shards, {NUM_CPUS} cores",
                fmt_rate(actors[a]),
                f"{actors[a] / actors[ACTOR_COUNTS[0]]:.2f}x",
                f">= {ACTORS_TARGET}x" if last else "",
                ok(actors_ratio >= ACTORS_TARGET) if last else "",
            )
        )
    for s in SHARD_COUNTS:
        rows.append(
            (
                f"(c) keyless, 2 actors, {s} shards",
                fmt_rate(keyless[s]),
                f"{keyless[s] / keyless[SHARD_COUNTS[0]]:.2f}x",
                "",
                "",
            )
        )
    text = table(rows)
    line = json.dumps(
        {
            "benchmark": "shards",
            "items": n,
            "repeats": repeats,
            "python": platform.python_version(),
            "ray": ray.__version__,
            "shardyard": shardyard.__version__,
            "cpus": info.num_cpus,
            "wall_s": wall,
            "results": {
                "keyed_by_shards": {str(k): v for k, v in keyed.items()},
                "keyed_by_actors": {str(k): v for k, v in actors.items()},
                "keyless_by_shards": {str(k): v for k, v in keyless.items()},
                "shards_ratio": shards_ratio,
                "actors_ratio": actors_ratio,
            },
            "targets": targets,
            "ok": all(targets.values()),
        }
    )
    print(text)
    print(line)
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "shards.txt").write_text(text + "\n" + line + "\n")
        (RESULTS / "shards.json").write_text(line + "\n")


if __name__ == "__main__":
    main()
