"""``shardyard.executor.Executor`` against ``concurrent.futures.ProcessPoolExecutor(2)``.

Everything runs in one process on one embedded local Ray (``shardyard.connect()``, 2 CPUs).
Both executors have 2 workers (shard actors / processes; the process pool uses the spawn
context, as forking a process that runs Ray's threads is unsafe). Each is started and its
start-up timed apart (construction to the first result), then warmed up once, then timed
(best of 5), then shut down before the next contender starts.

Cases:

(a) ``map(tiny, range(20_000), chunksize=100)`` with ``tiny(x) = x + 1``, every result
    collected and checked: items/s of each. Target: the Executor >= 0.5x the process pool.
    The first map after start-up (the warm-up) is reported apart, without a target: the
    Executor's window of calls handed to its actors starts at one per worker and grows.
(b) 20k separate ``submit(tiny, i)`` calls, then every future's result: futures/s from the
    first submit to the last result. Target: the Executor >= 20k/s. The process pool's
    figure is printed for comparison (no target).

Prints a table (case | shardyard | ProcessPoolExecutor(2) | ratio | target | ok) and, last,
one JSON line with every number, ratio and target boolean.

Run:
    python benchmarks/executor.py [--items N] [--repeats R]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import gc
import json
import multiprocessing
import platform
import time
from collections.abc import Callable
from typing import Any

import ray

import shardyard
from shardyard import ClusterConfig
from shardyard.executor import Executor

NUM_WORKERS = 2
CHUNKSIZE = 100
MAP_TARGET = 0.5  # Executor map items/s over ProcessPoolExecutor(2)'s
SUBMIT_TARGET = 20_000.0  # Executor futures/s


def tiny(x: int) -> int:
    return x + 1


def best_of(fn: Callable[[], Any], repeats: int) -> float:
    """Seconds of the fastest of ``repeats`` runs of ``fn``."""
    best = float("inf")
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measure(
    make: Callable[[], concurrent.futures.Executor], n: int, repeats: int
) -> dict[str, Any]:
    """Start-up, then map and submit rates of the executor ``make`` builds."""
    expected = [tiny(i) for i in range(n)]

    t0 = time.perf_counter()
    ex = make()
    try:
        assert ex.submit(tiny, 1).result(timeout=300) == 2
        startup = time.perf_counter() - t0

        def run_map() -> None:
            assert list(ex.map(tiny, range(n), chunksize=CHUNKSIZE)) == expected

        def run_submits() -> None:
            futures = [ex.submit(tiny, i) for i in range(n)]
            assert [f.result() for f in futures] == expected

        t0 = time.perf_counter()
        run_map()  # warm-up (timed apart: the first map after start-up)
        first_map_s = time.perf_counter() - t0
        map_s = best_of(run_map, repeats)
        run_submits()  # warm-up
        submit_s = best_of(run_submits, repeats)
    finally:
        ex.shutdown(wait=True)
    return {
        "startup_s": startup,
        "first_map_s": first_map_s,
        "first_map_items_per_s": n / first_map_s,
        "map_s": map_s,
        "map_items_per_s": n / map_s,
        "submit_s": submit_s,
        "submit_futures_per_s": n / submit_s,
    }


def fmt_rate(x: float) -> str:
    return f"{x / 1000:,.1f}k/s"


def print_table(rows: list[tuple[str, str, str, str, str, str]]) -> None:
    header = ("case", "shardyard", "ProcessPoolExecutor(2)", "ratio", "target", "ok")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    print(line)
    print("-" * len(line))
    for r in rows:
        print(" | ".join(x.ljust(w) for x, w in zip(r, widths, strict=True)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=20_000, help="items per case (20000)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs, best kept (5)")
    args = parser.parse_args(argv)
    n = args.items

    info = shardyard.connect(config=ClusterConfig(num_cpus=NUM_WORKERS))
    t_start = time.perf_counter()
    ours = measure(lambda: Executor(max_workers=NUM_WORKERS), n, args.repeats)
    spawn = multiprocessing.get_context("spawn")
    theirs = measure(
        lambda: concurrent.futures.ProcessPoolExecutor(NUM_WORKERS, mp_context=spawn),
        n,
        args.repeats,
    )
    wall = time.perf_counter() - t_start

    map_ratio = ours["map_items_per_s"] / theirs["map_items_per_s"]
    submit_ratio = ours["submit_futures_per_s"] / theirs["submit_futures_per_s"]
    targets = {
        "map_ratio_ge_0.5": map_ratio >= MAP_TARGET,
        "submit_ge_20k_per_s": ours["submit_futures_per_s"] >= SUBMIT_TARGET,
    }
    ok = lambda b: "yes" if b else "NO"  # noqa: E731
    print_table(
        [
            (
                "start-up (construct to first result)",
                f"{ours['startup_s']:.2f} s",
                f"{theirs['startup_s']:.2f} s",
                "",
                "",
                "",
            ),
            (
                f"(a) map {n} tiny items, chunksize={CHUNKSIZE}",
                fmt_rate(ours["map_items_per_s"]),
                fmt_rate(theirs["map_items_per_s"]),
                f"{map_ratio:.2f}x",
                f">= {MAP_TARGET}x",
                ok(targets["map_ratio_ge_0.5"]),
            ),
            (
                "(a') the first map after start-up (untimed above)",
                fmt_rate(ours["first_map_items_per_s"]),
                fmt_rate(theirs["first_map_items_per_s"]),
                f"{ours['first_map_items_per_s'] / theirs['first_map_items_per_s']:.2f}x",
                "",
                "",
            ),
            (
                f"(b) {n} submits, all results",
                fmt_rate(ours["submit_futures_per_s"]),
                fmt_rate(theirs["submit_futures_per_s"]),
                f"{submit_ratio:.2f}x",
                f">= {SUBMIT_TARGET / 1000:.0f}k/s",
                ok(targets["submit_ge_20k_per_s"]),
            ),
        ]
    )
    print(
        json.dumps(
            {
                "benchmark": "executor",
                "items": n,
                "chunksize": CHUNKSIZE,
                "repeats": args.repeats,
                "python": platform.python_version(),
                "ray": ray.__version__,
                "shardyard": shardyard.__version__,
                "cpus": info.num_cpus,
                "wall_s": wall,
                "results": {
                    "shardyard": ours,
                    "process_pool": theirs,
                    "map_ratio": map_ratio,
                    "submit_ratio": submit_ratio,
                },
                "targets": targets,
                "ok": all(targets.values()),
            }
        )
    )


if __name__ == "__main__":
    main()
