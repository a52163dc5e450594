"""Maps spread over thousands of shards, a few items each, on a real local Ray: exact, in
order per key, also under kills."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from typing import Any

import numpy as np
import pytest

from shardyard import Shard, ShardPool

pytestmark = pytest.mark.usefixtures("ray_local")


class Log(Shard):
    """Keeps every item it gets, per key (``x % 997``), in the order it got them."""

    def setup(self, shard_id: int) -> None:
        self.seen: dict[int, list[int]] = {}

    def process(self, batch: Any) -> list[int]:
        time.sleep(0.00002 * len(batch))
        for x in batch:
            self.seen.setdefault(x % 997, []).append(x)
        return [x * 2 for x in batch]

    def result(self) -> dict[int, list[int]]:
        return self.seen


def _merge(a: dict[int, list[int]], b: dict[int, list[int]]) -> dict[int, list[int]]:
    out = {k: list(v) for k, v in a.items()}
    for k, v in b.items():
        assert k not in out, f"key {k} on two shards"
        out[k] = list(v)
    return out


def test_a_map_over_thousands_of_shards_is_exact() -> None:
    items = np.arange(30_000)
    words = [f"w{i}" for i in range(5_000)]
    with ShardPool(lambda x: x + 1, num_actors=2, num_shards=4096) as pool:
        assert np.array_equal(np.asarray(pool.map(items, keys=items)), items + 1)
        assert np.array_equal(np.asarray(pool.map(items)), items + 1)  # keyless
        with ShardPool(str.upper, num_actors=2, num_shards=4096) as upper:
            assert upper.map(words, keys=words) == [w.upper() for w in words]
        stats = pool.stats()
        assert sum(s.items for s in stats.shards) == 2 * len(items)


def test_kills_during_a_map_over_many_shards_apply_each_item_once_in_order() -> None:
    items = list(range(40_000))
    with ShardPool(Log, num_actors=2, num_shards=1024, checkpoint_every=3) as pool:
        pool.start()
        out: dict[str, Any] = {}
        keys = [x % 997 for x in items]
        runner = threading.Thread(target=lambda: out.setdefault("r", pool.map(items, keys=keys)))
        runner.start()
        deadline = time.monotonic() + 60
        while pool.stats().actors[0].items < 4000 and runner.is_alive():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        pid = pool.stats().actors[0].pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        runner.join(timeout=240)
        assert not runner.is_alive()
        assert out["r"] == [x * 2 for x in items]
        more = list(range(40_000, 41_000))
        for x in more:  # submits after the map: behind its items, per key
            pool.submit(x, key=x % 997)
        pool.wait()
        seen = pool.reduce(_merge)
        expected: dict[int, list[int]] = {}
        for x in items + more:
            expected.setdefault(x % 997, []).append(x)
        assert seen == expected
        counts = Counter(len(v) for v in seen.values())
        assert sum(k * n for k, n in counts.items()) == len(items) + len(more)
        assert pool.stats().actors[0].restarts == 1


class Seq(Shard):
    """Keeps the items it got, in order."""

    def setup(self, shard_id: int) -> None:
        self.order: list[int] = []

    def process(self, batch: Any) -> list[int]:
        self.order.extend(batch)
        return list(batch)

    def result(self) -> list[int]:
        return self.order


def test_submits_then_a_map_of_the_same_keys_keep_their_order() -> None:
    first = list(range(3_000))
    with ShardPool(Seq, num_actors=2, num_shards=2048) as pool:
        for k in range(100):
            pool.submit(10_000 + k, key=k)  # handed over before the map's item of key k
        assert pool.map(first, keys=first) == first
        pool.wait()
        parts = pool.results()
    where = {x: (sid, i) for sid, order in parts.items() for i, x in enumerate(order)}
    assert sorted(where) == sorted([*first, *range(10_000, 10_100)])  # each once
    for k in range(100):
        (s1, i1), (s2, i2) = where[10_000 + k], where[k]
        assert s1 == s2 and i1 < i2, k
