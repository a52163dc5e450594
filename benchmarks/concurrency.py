"""I/O-bound handlers against running them one after another; fast handlers stay as fast.

Everything runs in one process on one embedded local Ray (``shardyard.connect()``, 2 CPUs),
with the default ``max_concurrency``. Each pool is started, warmed up with one map, timed
(best of ``--repeats`` maps, every output checked) and closed before the next case starts.

Cases:

(a) 400 items of a 10 ms wait, 2 actors, 64 shards: a sync handler
    (``time.sleep(0.01)``) and an async one (``await asyncio.sleep(0.01)``), each keyless,
    keyed by the items (``keys=items``) and by strings (``keys=[str(i) ...]``). Against
    serial: the same 400 calls one after another in this process, measured here (about
    4.0 s). Target: each case >= 25x serial.
(a') for information: the sync keyless case with ``max_concurrency=1`` (one call at a time
    per actor, as before issue 11: about 2x).
(b) fast handlers, 200k int items, 2 actors: ``lambda x: x + 1`` keyless and keyed
    (``keys=items``), and ``batched=True`` with ``lambda b: [x + 1 for x in b]``: items/s.
(b') what deciding where a call runs costs a fast handler: ``run_batch`` of
    ``lambda x: x + 1`` on 1024 items, with the actor's ``Runner`` and without (best of
    2000, in this process), against the time the keyless pool of (b) takes per 1024 items.
    Target: <= 5%.

Prints a table (case | time | rate | ratio | target | ok) and, last, one JSON line with
every number, ratio and target boolean. The table and the JSON line are also written to
``benchmarks/results/concurrency.txt`` and ``benchmarks/results/concurrency.json``.

Run:
    python benchmarks/concurrency.py [--repeats R] [--no-save]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray

import shardyard
from shardyard import ClusterConfig, PoolConfig, ShardPool
from shardyard.actors.concurrency import Runner
from shardyard.actors.handler import run_batch

RESULTS = Path(__file__).resolve().parent / "results"
NUM_CPUS = 2
IO_ITEMS = 400
IO_WAIT_S = 0.01
IO_ACTORS = 2
IO_SHARDS = 64
IO_TARGET = 25.0  # pool speed-up over serial
FAST_ITEMS = 200_000
BATCH = 1024
OVERHEAD_TARGET = 0.05  # the runner's cost per 1024 items over the pool's


def sync_wait(x: int) -> int:
    time.sleep(IO_WAIT_S)
    return x


async def async_wait(x: int) -> int:
    await asyncio.sleep(IO_WAIT_S)
    return x


def best_of(run: Callable[[], None], repeats: int) -> float:
    """Seconds of the fastest of ``repeats`` runs, after one warm-up run."""
    run()
    best = float("inf")
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
    return best


def serial_s() -> dict[str, float]:
    """The 400 waits one after another, here: sync and async."""
    t0 = time.perf_counter()
    for i in range(IO_ITEMS):
        sync_wait(i)
    sync_s = time.perf_counter() - t0

    async def one_by_one() -> None:
        for i in range(IO_ITEMS):
            await async_wait(i)

    t0 = time.perf_counter()
    asyncio.run(one_by_one())
    return {"sync": sync_s, "async": time.perf_counter() - t0}


def measure_io(handler: Any, keys: str, repeats: int, **options: Any) -> float:
    items = list(range(IO_ITEMS))
    key_list = {"keyless": None, "keys=items": items, "keys=str(i)": [str(i) for i in items]}
    with ShardPool(handler, num_actors=IO_ACTORS, num_shards=IO_SHARDS, **options) as pool:

        def run() -> None:
            assert pool.map(items, keys=key_list[keys]) == items, "wrong outputs"

        return best_of(run, repeats)


def measure_fast(repeats: int) -> dict[str, float]:
    items = list(range(FAST_ITEMS))
    expected = [x + 1 for x in items]
    out: dict[str, float] = {}
    with ShardPool(lambda x: x + 1, num_actors=2) as pool:

        def keyless() -> None:
            assert pool.map(items) == expected, "wrong outputs"

        def keyed() -> None:
            assert pool.map(items, keys=items) == expected, "wrong outputs"

        out["keyless"] = best_of(keyless, repeats)
        out["keys=items"] = best_of(keyed, repeats)
    with ShardPool(lambda b: [x + 1 for x in b], num_actors=2, batched=True) as pool:

        def batched() -> None:
            assert pool.map(items) == expected, "wrong outputs"

        out["batched"] = best_of(batched, repeats)
    return out


def runner_cost_s() -> dict[str, float]:
    """``run_batch`` of a fast per-item function on one batch, with and without a Runner."""
    items = list(range(BATCH))

    async def best(runner: Runner | None) -> float:
        fastest = float("inf")
        for _ in range(2000):
            t0 = time.perf_counter()
            await run_batch(lambda x: x + 1, False, items, "input", runner)
            fastest = min(fastest, time.perf_counter() - t0)
        return fastest

    async def both() -> dict[str, float]:
        runner = Runner(PoolConfig().max_concurrency)
        return {"without": await best(None), "with": await best(runner)}

    return asyncio.run(both())


def table(rows: list[tuple[str, ...]]) -> str:
    header = ("case", "time", "rate", "ratio", "target", "ok")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    out = [line, "-" * len(line)]
    out += [" | ".join(x.ljust(w) for x, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed maps, best kept (3)")
    parser.add_argument("--no-save", action="store_true", help="do not write results/")
    args = parser.parse_args(argv)
    repeats = args.repeats
    ok = lambda b: "yes" if b else "NO"  # noqa: E731

    info = shardyard.connect(config=ClusterConfig(num_cpus=NUM_CPUS))
    t_start = time.perf_counter()
    serial = serial_s()
    io: dict[str, float] = {}
    for kind, handler in (("sync", sync_wait), ("async", async_wait)):
        for keys in ("keyless", "keys=items", "keys=str(i)"):
            io[f"{kind} {keys}"] = measure_io(handler, keys, repeats)
    one_at_a_time = measure_io(sync_wait, "keyless", repeats, max_concurrency=1)
    fast = measure_fast(repeats)
    cost = runner_cost_s()
    wall = time.perf_counter() - t_start

    speedups = {case: serial[case.split()[0]] / s for case, s in io.items()}
    pool_per_batch = fast["keyless"] / FAST_ITEMS * BATCH
    overhead = (cost["with"] - cost["without"]) / pool_per_batch
    targets = {f"{case}_ge_{IO_TARGET:g}x": x >= IO_TARGET for case, x in speedups.items()}
    targets["runner_overhead_le_5pct"] = overhead <= OVERHEAD_TARGET

    default_mc = PoolConfig().max_concurrency
    rows: list[tuple[str, ...]] = [
        (
            f"serial: {IO_ITEMS} x {IO_WAIT_S * 1000:g} ms, sync / async, one by one",
            f"{serial['sync']:.2f} s / {serial['async']:.2f} s",
            "",
            "1x",
            "",
            "",
        )
    ]
    for case, s in io.items():
        rows.append(
            (
                f"(a) {case}, {IO_ACTORS} actors, {IO_SHARDS} shards, max_concurrency={default_mc}",
                f"{s * 1000:.0f} ms",
                f"{IO_ITEMS / s:,.0f}/s",
                f"{speedups[case]:.1f}x",
                f">= {IO_TARGET:g}x",
                ok(speedups[case] >= IO_TARGET),
            )
        )
    rows.append(
        (
            "(a') sync keyless, max_concurrency=1",
            f"{one_at_a_time * 1000:.0f} ms",
            f"{IO_ITEMS / one_at_a_time:,.0f}/s",
            f"{serial['sync'] / one_at_a_time:.1f}x",
            "",
            "",
        )
    )
    for case, s in fast.items():
        rows.append(
            (
                f"(b) lambda x: x + 1, {FAST_ITEMS // 1000}k items, 2 actors, {case}",
                f"{s * 1000:.0f} ms",
                f"{FAST_ITEMS / s / 1e6:.2f}M/s",
                "",
                "",
                "",
            )
        )
    rows.append(
        (
            f"(b') Runner's cost per {BATCH} fast items / keyless pool's",
            f"{(cost['with'] - cost['without']) * 1e6:.1f} us / {pool_per_batch * 1e6:.0f} us",
            "",
            f"{overhead * 100:.1f}%",
            f"<= {OVERHEAD_TARGET * 100:g}%",
            ok(overhead <= OVERHEAD_TARGET),
        )
    )
    text = table(rows)
    line = json.dumps(
        {
            "benchmark": "concurrency",
            "repeats": repeats,
            "max_concurrency": default_mc,
            "python": platform.python_version(),
            "ray": ray.__version__,
            "shardyard": shardyard.__version__,
            "cpus": info.num_cpus,
            "wall_s": wall,
            "results": {
                "serial_s": serial,
                "io_s": io,
                "io_speedup": speedups,
                "sync_keyless_max_concurrency_1_s": one_at_a_time,
                "fast_s": fast,
                "fast_items_per_s": {k: FAST_ITEMS / v for k, v in fast.items()},
                "runner_batch_s": cost,
                "runner_overhead": overhead,
            },
            "targets": targets,
            "ok": all(targets.values()),
        }
    )
    print(text)
    print(line)
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "concurrency.txt").write_text(text + "\n" + line + "\n")
        (RESULTS / "concurrency.json").write_text(line + "\n")


if __name__ == "__main__":
    main()
