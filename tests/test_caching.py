"""Caching: data shared once through the object store, and the per-shard memo."""

from __future__ import annotations

import asyncio
import doctest
import importlib
import inspect
import os
import threading
import time
from collections import OrderedDict
from typing import Any

import numpy as np
import pydantic
import pytest
import ray

import shardyard
from shardyard import ConfigError, SerializationError, Shard, ShardPool
from shardyard.actors.memo import memo_of, memoize

TABLE = np.arange(5000, dtype=np.int64) * 3 + 1


def _lookup(x: int) -> tuple[int, int, bool, int]:
    """(pid, address of the table's buffer, writeable, the value)."""
    table = shardyard.shared["table"]
    ptr = table.__array_interface__["data"][0]
    return os.getpid(), ptr, bool(table.flags.writeable), int(table[x]) + shardyard.shared["k"]


class Lookup(Shard):
    def setup(self, shard_id: int) -> None:
        self.offset = int(self.shared["table"][0])  # readable from setup on

    def process_item(self, x: int) -> tuple[int, int]:
        return os.getpid(), int(self.shared["table"][x]) - self.offset


def _check_shared(out: list[tuple[int, int, bool, int]], items: list[int]) -> set[int]:
    assert [v for _, _, _, v in out] == [int(TABLE[x]) + 7 for x in items]
    assert not any(w for _, _, w, _ in out)  # mapped read-only from the object store
    pointers: dict[int, set[int]] = {}
    for pid, ptr, _, _ in out:
        pointers.setdefault(pid, set()).add(ptr)
    # Put once: every item an actor ran read the one buffer (no copy per shard or call).
    assert all(len(p) == 1 for p in pointers.values()), pointers
    return set(pointers)


@pytest.mark.usefixtures("ray_local")
def test_a_shared_array_is_read_zero_copy_by_every_shard_keyed_and_keyless() -> None:
    items = [int(x) for x in np.random.default_rng(0).integers(0, len(TABLE), 3000)]
    with ShardPool(_lookup, num_actors=2, num_shards=4, shared={"table": TABLE, "k": 7}) as pool:
        assert pool.shared["k"] == 7
        keyed = pool.map(items, keys=items)
        pids = _check_shared(keyed, items)
        assert len(pids) == 2
        assert all(s.items > 0 for s in pool.stats().shards)  # every shard read it
        keyless = pool.map(items)
        assert pids | _check_shared(keyless, items) == pids
        assert pool.stats().memo_hits == pool.stats().memo_misses == 0  # memo off


@pytest.mark.usefixtures("ray_local")
def test_shared_reaches_a_restarted_actor_and_the_actors_of_a_scale_out() -> None:
    items = list(range(600))
    expected = [int(TABLE[x] - TABLE[0]) for x in items]
    with ShardPool(Lookup, num_actors=2, num_shards=6, shared={"table": TABLE}) as pool:
        first = pool.map(items, keys=items)
        assert [v for _, v in first] == expected
        old = {a.actor: a.pid for a in pool.stats().actors}
        handle = dict(pool._live_handles())[0]
        ray.kill(handle, no_restart=False)  # Ray restarts it with its constructor args
        deadline = time.monotonic() + 60
        while pool.stats(timeout=1.0).actors[0].pid in (None, old[0]):
            assert time.monotonic() < deadline, "the actor was not restarted"
            time.sleep(0.05)  # polling a condition, with a deadline
        again = pool.map(items, keys=items)
        assert [v for _, v in again] == expected
        assert {pid for pid, _ in again} - set(old.values())  # the restarted process ran
        report = pool.scale(3)
        assert report.started_actors == [2]
        third = pool.map(items, keys=items)
        assert [v for _, v in third] == expected
        new_pid = pool.stats().actors[2].pid
        assert new_pid in {pid for pid, _ in third}  # the new actor read it too


def test_shared_is_validated_at_construction_and_not_readable_on_the_driver() -> None:
    with pytest.raises(TypeError, match="shared must be a dict"):
        ShardPool(_lookup, shared=[("table", TABLE)])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"shared names must be str, got 3 \(int\)"):
        ShardPool(_lookup, shared={"table": TABLE, 3: "x"})  # type: ignore[dict-item]
    with pytest.raises(SerializationError, match=r"shared\['lock'\] cannot be pickled"):
        ShardPool(_lookup, shared={"table": TABLE, "lock": threading.Lock()})
    with pytest.raises(RuntimeError, match="only readable inside a pool's handler"):
        shardyard.shared["table"]
    assert "outside" in repr(shardyard.shared)


def test_memo_is_refused_where_it_does_not_apply() -> None:
    with pytest.raises(ConfigError, match=r"memo_size=8 .* a Shard subclass"):
        ShardPool(Lookup, memo_size=8)
    with pytest.raises(ConfigError, match=r"memo_size=8 .* batched=True"):
        ShardPool(lambda b: b, batched=True, memo_size=8)
    with pytest.raises(pydantic.ValidationError, match="memo_size"):
        ShardPool(_lookup, memo_size=-1)


_FAILED_ONCE: set[int] = set()  # in the actor process


def _square_failing_first(x: Any) -> Any:
    if isinstance(x, int) and x < 0 and x not in _FAILED_ONCE:
        _FAILED_ONCE.add(x)
        raise ValueError(f"first call of {x}")
    return x[0] if isinstance(x, list) else x * x


@pytest.mark.usefixtures("ray_local")
def test_memo_counts_are_exact_and_failures_are_not_kept() -> None:
    items = [int(x) for x in np.random.default_rng(1).permutation(np.arange(1000) % 100)]
    with ShardPool(_square_failing_first, num_actors=1, num_shards=1, memo_size=100) as pool:
        assert pool.map(items, keys=items) == [x * x for x in items]
        st = pool.stats()
        assert (st.memo_misses, st.memo_hits, st.memo_uncached) == (100, 900, 0)
        assert (st.shards[0].memo_misses, st.shards[0].memo_hits) == (100, 900)
        assert "memo 900 hits / 100 misses" in repr(st)
        # -5 fails on its first call: not kept, so the next -5 runs again (and is kept).
        out = pool.map([-5, -5, -5, [1], [1]], keys=[0] * 5, return_exceptions=True)
        assert isinstance(out[0], Exception) and out[1:] == [25, 25, 1, 1]
        st = pool.stats()
        assert (st.memo_misses, st.memo_hits, st.memo_uncached) == (102, 901, 2)


async def _async_square(x: int) -> int:
    # Never suspends: the actor steps such coroutines in item order, so the LRU sees the
    # stream in order and its counts are exactly a serial LRU's.
    return x * x


def _lru_counts(stream: list[int], size: int) -> tuple[int, int]:
    """(hits, misses) of an LRU of ``size`` over ``stream``, serially."""
    table: OrderedDict[int, None] = OrderedDict()
    hits = 0
    for x in stream:
        if x in table:
            hits += 1
            table.move_to_end(x)
        else:
            table[x] = None
            if len(table) > size:
                table.popitem(last=False)
    return hits, len(stream) - hits


@pytest.mark.usefixtures("ray_local")
def test_an_async_function_is_memoised_and_a_small_lru_evicts() -> None:
    stream = [int(x) for x in np.random.default_rng(2).zipf(1.5, 2000) % 50]
    hits, misses = _lru_counts(stream, 10)
    assert hits > 0 and misses > 50  # evictions happened: some keys missed twice
    with ShardPool(_async_square, num_actors=1, num_shards=1, memo_size=10) as pool:
        assert pool.map(stream, keys=stream) == [x * x for x in stream]
        st = pool.stats()
        assert (st.memo_hits, st.memo_misses) == (hits, misses)


def test_the_memo_wrapper_keeps_async_apart_and_is_thread_safe() -> None:
    assert inspect.iscoroutinefunction(memoize(_async_square, 4))
    assert not inspect.iscoroutinefunction(memoize(_square_failing_first, 4))
    calls: list[int] = []

    def f(x: int) -> int:
        calls.append(x)
        return -x

    g = memoize(f, 64)
    assert g.__name__ == "f"
    n_threads, per_thread = 8, 2000
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            for x in rng.integers(0, 100, per_thread).tolist():
                assert g(x) == -x
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    memo = memo_of(g)
    assert memo is not None and len(memo) <= 64
    counts = memo.counters()
    assert counts["hits"] + counts["misses"] == n_threads * per_thread
    assert counts["misses"] == len(calls)  # every miss ran f once, every hit none
    assert len(memo) == 64 and counts["evictions"] == counts["misses"] - 64
    typed = memoize(f, 4)
    assert [type(typed(v)) for v in (1, 1.0, 1)] == [int, float, int]  # 1 and 1.0 kept apart


def test_a_key_whose_call_is_running_waits_for_it_and_reruns_if_it_raises() -> None:
    async def main() -> tuple[list[Any], list[int], dict[str, int]]:
        gate = asyncio.Event()
        calls: list[int] = []

        async def slow(x: int) -> int:
            calls.append(x)
            await gate.wait()
            if len(calls) == 1:
                raise ValueError("the first call fails")
            return -x

        g = memoize(slow, 4)
        tasks = [asyncio.create_task(g(7)) for _ in range(5)]
        await asyncio.sleep(0)  # one loop turn: every task reaches the memo (no timing)
        assert calls == [7]  # the other four wait for the first call
        gate.set()
        out = await asyncio.gather(*tasks, return_exceptions=True)
        memo = memo_of(g)
        assert memo is not None
        return out, calls, memo.counters()

    out, calls, counts = asyncio.run(main())
    assert isinstance(out[0], ValueError) and out[1:] == [-7] * 4
    assert calls == [7, 7]  # the failure was not kept: one waiter ran it again
    assert (counts["misses"], counts["hits"]) == (2, 3)


class OwnShared(Shard):
    def setup(self, shard_id: int) -> None:
        self.shared = {"mine": shard_id}  # a subclass's own attribute of that name wins


def test_a_shards_own_shared_attribute_is_kept_and_the_pools_is_never_snapshotted() -> None:
    own = OwnShared()
    own.setup(3)
    assert own.shared == {"mine": 3} and own.snapshot()["shared"] == {"mine": 3}
    plain = Lookup()
    assert plain.shared is shardyard.shared and "shared" not in plain.snapshot()


@pytest.mark.parametrize("name", ["shardyard.actors.memo", "shardyard.actors.shared"])
def test_docstring_examples_run(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_the_memo_tells_apart_items_that_compare_equal(ray_local: Any) -> None:
    items = [0.0, -0.0, (1,), (1.0,), (True,), frozenset([1.0]), frozenset([1]), 1, 1.0, True]
    with ShardPool(repr, num_actors=1, num_shards=1, memo_size=64) as pool:
        assert pool.map(items + items) == [repr(x) for x in items + items]
        stats = pool.stats()
        assert (stats.memo_misses, stats.memo_hits) == (len(items), len(items))
