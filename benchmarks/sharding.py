"""Throughput of the key -> shard strategies against uhashring and a pure-Python ring.

Every strategy routes 1M integer keys and 1M string keys to 64 shards (hashing included); each
cell is the best of 3 runs. The baselines are too slow for 1M keys, so they route a 20k-key
subset and are scaled to keys/s: ``uhashring.HashRing.get_node`` (a popular PyPI consistent-hash
ring) and a plain loop of ``hashlib.md5`` + ``bisect`` over a sorted ring of 256 vnodes per shard.

Prints a table and, last, one JSON line with every number.

Run:
    python benchmarks/sharding.py
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import platform
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
from uhashring import HashRing

from shardyard.sharding import available_strategies, strategy

N_KEYS = 1_000_000
N_BASELINE = 20_000
NUM_SHARDS = 64
REPEATS = 3


def best_rate(fn: Callable[[], Any], n: int, repeats: int = REPEATS) -> float:
    """Return keys per second of the fastest of ``repeats`` runs of ``fn`` over ``n`` keys."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return n / best


class Md5BisectRing:
    """The textbook pure-Python ring: md5 of ``"shard-vnode"`` points, bisect per key."""

    def __init__(self, num_shards: int, vnodes: int = 256) -> None:
        pts = []
        for s in range(num_shards):
            for v in range(vnodes):
                digest = hashlib.md5(f"{s}-{v}".encode()).digest()
                pts.append((int.from_bytes(digest[:8], "big"), s))
        pts.sort()
        self.points = [p for p, _ in pts]
        self.owners = [s for _, s in pts]

    def get(self, key: object) -> int:
        h = int.from_bytes(hashlib.md5(str(key).encode()).digest()[:8], "big")
        i = bisect.bisect_left(self.points, h)
        return self.owners[i % len(self.points)]


def main() -> None:
    rng = np.random.default_rng(0)
    int_keys = rng.integers(0, 2**63 - 1, size=N_KEYS, dtype=np.int64)
    str_keys = [f"user-{k}" for k in rng.integers(0, 10**12, size=N_KEYS).tolist()]
    results: dict[str, dict[str, float]] = {}

    for name in available_strategies():
        s = strategy(name, NUM_SHARDS)
        s_int, s_str = s, s
        if name == "range":  # the value path: boundaries fitted on a sample of each key kind
            s_int = s.fit(int_keys[:100_000])  # type: ignore[attr-defined]
            s_str = s.fit(str_keys[:100_000])  # type: ignore[attr-defined]
        results[name] = {
            "int": best_rate(partial(s_int.assign, int_keys), N_KEYS),
            "str": best_rate(partial(s_str.assign, str_keys), N_KEYS),
        }

    ring = HashRing(nodes=[f"shard-{i}" for i in range(NUM_SHARDS)])
    sub_int = int_keys[:N_BASELINE].tolist()
    sub_str = str_keys[:N_BASELINE]
    results["uhashring"] = {
        "int": best_rate(lambda: [ring.get_node(k) for k in sub_int], N_BASELINE),
        "str": best_rate(lambda: [ring.get_node(k) for k in sub_str], N_BASELINE),
    }
    py_ring = Md5BisectRing(NUM_SHARDS)
    results["python md5+bisect"] = {
        "int": best_rate(lambda: [py_ring.get(k) for k in sub_int], N_BASELINE),
        "str": best_rate(lambda: [py_ring.get(k) for k in sub_str], N_BASELINE),
    }

    base = results["uhashring"]
    header = (
        f"{'strategy':<18} | {'int keys/s':>12} | {'str keys/s':>12} | vs uhashring (int / str)"
    )
    print(
        f"{N_KEYS:,} keys, {NUM_SHARDS} shards, best of {REPEATS}; "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, numpy {np.__version__}"
    )
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        ratio = f"{r['int'] / base['int']:.1f}x / {r['str'] / base['str']:.1f}x"
        print(f"{name:<18} | {r['int']:>12,.0f} | {r['str']:>12,.0f} | {ratio}")
    print(
        json.dumps(
            {
                "num_keys": N_KEYS,
                "num_shards": NUM_SHARDS,
                "cores": os.cpu_count(),
                "keys_per_s": {
                    k: {kk: round(vv) for kk, vv in v.items()} for k, v in results.items()
                },
                "ring_vs_uhashring_int": round(results["ring"]["int"] / base["int"], 1),
            }
        )
    )


if __name__ == "__main__":
    main()
