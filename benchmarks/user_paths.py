"""The plain paths a new user writes first, timed the same way on any checkout.

Every case uses only the API a user finds in the README's first pages (no tuning
options), so the same file runs against an older checkout (``PYTHONPATH=<checkout>``) and
the two runs compare (``--compare``). 2 actors on an embedded local Ray of 2 CPUs; each
case is warmed up once, then timed (best of ``--repeats``); pools started before timing
unless the case says it includes its start.

Cases:

- ``list``: 200k ints as a Python list; a per-item ``lambda x: x + 1`` and a batch handler
  ``lambda b: [x + 1 for x in b]`` (``batched=True``), keyless and ``keys=items``;
- ``numpy``: the same over ``np.arange(200_000)`` (``lambda b: b + 1`` for batches);
- ``submit``: 100k separate ``pool.submit(x)`` then every ``result()``, per-item and batch
  handler;
- ``generator``: ``for y in pool.map_unordered(x for x in range(1_000_000))``, summing, with
  both handlers;
- ``wordcount``: the 2.77M words of the standard library's ``.py`` files, the README's
  three ways, each including its pool's start (Ray's own start is apart): files as items
  with per-file Counters merged from ``map_unordered``; a ``Shard`` reading the files keyed
  by path then ``reduce(operator.add)``; the driver splitting and ``map(words,
  keys=words)`` into the README's ``WordCount`` then ``reduce(operator.add)``, and the same
  with the in-place merge the README shows; against a serial ``Counter`` in this process.
  Results checked equal; best of ``repeats + 1`` runs, each with a fresh pool;
- ``shards``: the 200k keyed map with 16, 256 and 4,096 shards (2 actors), and with 32
  actors (256 shards);
- ``large``: 200 float64 arrays of 4 MB through ``pool.map`` (a handler returning one
  number) vs the same through raw async actor calls;
- ``io``: 400 items of a 10 ms wait, 2 actors, 64 shards: ``time.sleep`` and ``asyncio.sleep``
  handlers, keyless and keyed (``keys=str(i)``), against the 4.0 s a serial loop takes.

Run:
    python benchmarks/user_paths.py [--only list,io] [--label after]
    python benchmarks/user_paths.py --compare results/user_paths_before.json \
        results/user_paths_after.json
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import operator
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "peers"))

import common  # noqa: E402
from common import count_file, read_words, stdlib_files  # noqa: E402
from ray import cloudpickle  # noqa: E402

cloudpickle.register_pickle_by_value(common)  # the actors cannot import benchmarks/peers

N = 200_000
CASES = ["list", "numpy", "submit", "generator", "wordcount", "shards", "large", "io"]


def inc(x: int) -> int:
    return x + 1


def inc_list(batch: Any) -> Any:
    return [x + 1 for x in batch]


def inc_array(batch: Any) -> Any:
    return batch + 1


def first_sum(a: np.ndarray) -> float:
    return float(a[0])


def sleepy(x: Any) -> Any:
    time.sleep(0.01)
    return x


async def asleep(x: Any) -> Any:
    await asyncio.sleep(0.01)
    return x


def best(fn: Callable[[], Any], repeats: int) -> float:
    """Seconds of the fastest of ``repeats`` timed runs of ``fn`` (after one warm-up)."""
    fn()
    out = float("inf")
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        out = min(out, time.perf_counter() - t0)
    return out


def run_cases(only: list[str], repeats: int) -> dict[str, float]:
    import ray

    import shardyard
    from shardyard import ClusterConfig, ShardPool

    out: dict[str, float] = {}
    t0 = time.perf_counter()
    shardyard.connect(config=ClusterConfig(num_cpus=2))
    out["ray start s"] = time.perf_counter() - t0
    xs = list(range(N))
    arr = np.arange(N)

    def rate(name: str, n: int, fn: Callable[[], Any]) -> None:
        out[name] = n / best(fn, repeats)
        print(f"{name:<55} {out[name] / 1e3:>10.1f}k items/s", flush=True)

    def secs(name: str, fn: Callable[[], Any], r: int = repeats) -> None:
        out[name] = best(fn, r)
        print(f"{name:<55} {out[name]:>10.3f} s", flush=True)

    if "list" in only or "numpy" in only:
        with (
            ShardPool(inc, num_actors=2) as per_item,
            ShardPool(inc_list, batched=True, num_actors=2) as batch,
            ShardPool(inc_array, batched=True, num_actors=2) as batch_np,
        ):
            if "list" in only:
                rate("list: per-item, keyless", N, lambda: per_item.map(xs))
                rate("list: per-item, keys=items", N, lambda: per_item.map(xs, keys=xs))
                rate("list: batch handler, keyless", N, lambda: batch.map(xs))
                rate("list: batch handler, keys=items", N, lambda: batch.map(xs, keys=xs))
            if "numpy" in only:
                rate("numpy: per-item, keyless", N, lambda: per_item.map(arr))
                rate("numpy: per-item, keys=items", N, lambda: per_item.map(arr, keys=arr))
                rate("numpy: batch handler, keyless", N, lambda: batch_np.map(arr))
                rate("numpy: batch handler, keys=items", N, lambda: batch_np.map(arr, keys=arr))
    if "submit" in only:
        m = 100_000
        for label, kw in (("per-item", {}), ("batch handler", {"batched": True})):
            handler = inc_list if kw else inc
            with ShardPool(handler, num_actors=2, **kw) as pool:

                def submits(pool: Any = pool) -> None:
                    futs = [pool.submit(x) for x in range(m)]
                    for f in futs:
                        f.result()

                rate(f"submit: {m // 1000}k futures, {label}", m, submits)
    if "generator" in only:
        g = 1_000_000
        for label, kw in (("per-item", {}), ("batch handler", {"batched": True})):
            handler = inc_list if kw else inc
            with ShardPool(handler, num_actors=2, **kw) as pool:

                def loop(pool: Any = pool) -> None:
                    total = 0
                    for y in pool.map_unordered(x for x in range(g)):
                        total += y
                    assert total == g * (g + 1) // 2

                rate(f"generator -> map_unordered, for loop, {label}", g, loop)
    if "wordcount" in only:
        word_count_cases(out, repeats)
    if "shards" in only:
        for actors, shards in ((2, 16), (2, 256), (2, 4096), (32, 256)):
            with ShardPool(inc, num_actors=actors, num_shards=shards) as pool:
                rate(
                    f"shards: keyed 200k, {actors} actors, {shards} shards",
                    N,
                    lambda pool=pool: pool.map(xs, keys=xs),
                )
    if "large" in only:
        arrays = [np.full(512 * 1024, float(i)) for i in range(200)]  # 4 MB each
        nbytes = sum(a.nbytes for a in arrays)
        with ShardPool(first_sum, num_actors=2) as pool:
            secs("large: 200 x 4 MB through pool.map", lambda: pool.map(arrays))
        out["large: GB/s pool.map"] = nbytes / out["large: 200 x 4 MB through pool.map"] / 1e9

        @ray.remote
        class Raw:
            async def f(self, a: np.ndarray) -> float:
                return float(a[0])

        raws = [Raw.remote() for _ in range(2)]  # type: ignore[attr-defined]
        ray.get([r.f.remote(arrays[0]) for r in raws])
        secs(
            "large: 200 x 4 MB through raw actor calls",
            lambda: ray.get([raws[i % 2].f.remote(a) for i, a in enumerate(arrays)]),
        )
        out["large: GB/s raw"] = nbytes / out["large: 200 x 4 MB through raw actor calls"] / 1e9
        for r in raws:
            ray.kill(r)
    if "io" in only:
        items = list(range(400))
        keys = [str(i) for i in items]
        for label, fn in (("sync time.sleep", sleepy), ("async asyncio.sleep", asleep)):
            with ShardPool(fn, num_actors=2, num_shards=64) as pool:
                for kind, ks in (("keyless", None), ("keyed", keys)):
                    name = f"io: 400 x 10 ms, {label}, {kind}"
                    secs(name, lambda pool=pool, ks=ks: pool.map(items, keys=ks))
                    out[f"{name} (x serial)"] = 4.0 / out[name]
    return out


def word_count_cases(out: dict[str, float], repeats: int) -> None:
    import shardyard_peer  # the README's WordCount and a Shard reading files

    from shardyard import ShardPool

    cloudpickle.register_pickle_by_value(shardyard_peer)
    word_count, file_words = shardyard_peer.WordCount, shardyard_peer.FileWords
    paths = stdlib_files()

    def serial() -> Counter[str]:
        c: Counter[str] = Counter()
        for p in paths:
            c.update(read_words(p))
        return c

    expected = serial()
    n_words = sum(expected.values())
    out["wordcount: words"] = n_words
    out["wordcount: distinct"] = len(expected)

    def timed(name: str, job: Callable[[], Counter[str]]) -> None:
        runs = []
        for _ in range(repeats + 1):
            gc.collect()
            t0 = time.perf_counter()
            got = job()
            runs.append(time.perf_counter() - t0)
            assert got == expected, name
        out[name] = min(runs)  # each run starts its own pool: the first is one of them
        print(f"{name:<55} {out[name]:>10.3f} s  ({n_words / out[name] / 1e6:.2f}M words/s)")

    def files() -> Counter[str]:
        with ShardPool(count_file, num_actors=2) as pool:
            total: Counter[str] = Counter()
            for c in pool.map_unordered(paths):
                total.update(c)
            return total

    def shard_files() -> Counter[str]:
        with ShardPool(file_words, num_actors=2) as pool:
            pool.map(paths, keys=paths)
            return pool.reduce(operator.add)  # type: ignore[no-any-return]

    def shard_words(combine: Callable[[Any, Any], Any] = operator.add) -> Counter[str]:
        words = [w for p in paths for w in read_words(p)]
        with ShardPool(word_count, num_actors=2) as pool:
            pool.map(words, keys=words)
            return pool.reduce(combine)  # type: ignore[no-any-return]

    merge = shardyard_peer.update_into  # a.update(b); return a

    timed("wordcount: serial Counter", serial)
    timed("wordcount: files, map_unordered + merge (incl. start)", files)
    timed("wordcount: Shard reads files, reduce(add) (incl. start)", shard_files)
    timed("wordcount: words keyed by word, reduce(add) (incl. start)", shard_words)
    timed(
        "wordcount: words keyed by word, reduce(merge) (incl. start)",
        lambda: shard_words(merge),
    )


def word_count_bars(out: dict[str, float]) -> list[dict[str, Any]]:
    """The issue's word count bars, when the ``wordcount`` case ran."""
    words = out.get("wordcount: words")
    if not words:
        return []
    keyed = words / min(
        out["wordcount: words keyed by word, reduce(add) (incl. start)"],
        out["wordcount: words keyed by word, reduce(merge) (incl. start)"],
    )
    files = min(
        out["wordcount: files, map_unordered + merge (incl. start)"],
        out["wordcount: Shard reads files, reduce(add) (incl. start)"],
    )
    return [
        {
            "bar": "words keyed by word, end to end (read, split, start, map, reduce)",
            "value": keyed,
            "target": ">= 1.5e6 words/s",
            "ok": keyed >= 1.5e6,
        },
        {
            "bar": "file-based word count, end to end incl. pool start (the faster way)",
            "value": files,
            "target": "<= 1.35 s",
            "ok": files <= 1.35,
        },
    ]


def compare(before_path: str, after_path: str) -> None:
    before = json.loads(Path(before_path).read_text())["results"]
    after = json.loads(Path(after_path).read_text())["results"]
    print(f"{'case':<60} | {'before':>12} | {'after':>12} | after/before")
    for name in after:
        if name not in before:
            continue
        b, a = before[name], after[name]
        print(f"{name:<60} | {b:>12.4g} | {a:>12.4g} | {a / b if b else float('nan'):.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help=",".join(CASES))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--label", default="current")
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"))
    args = parser.parse_args()
    if args.compare:
        compare(*args.compare)
        return
    only = args.only.split(",") if args.only else CASES
    import shardyard

    results = run_cases(only, args.repeats)
    doc = {
        "label": args.label,
        "bars": word_count_bars(results),
        "shardyard": str(Path(shardyard.__file__).parent.parent.name),
        "loadavg": list(os.getloadavg()),
        "results": results,
    }
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"user_paths_{args.label}.json").write_text(json.dumps(doc, indent=1))
    print(json.dumps(doc))


if __name__ == "__main__":
    main()
