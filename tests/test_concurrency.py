"""Tests of shardyard.actors.concurrency: blocking handlers on threads, async items at once.

The first part drives a :class:`Runner` directly (no Ray); the rest runs pools and a shard
actor on the shared local Ray. Concurrency is shown by overlap: handlers return when they
started and ended (``time.time()``, one clock for every process of this machine), and the
most intervals of one actor open at the same moment is counted.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pydantic
import pytest
import ray

from shardyard import PoolConfig, Shard, ShardPool, TaskError
from shardyard.actors import remote_shard_actor
from shardyard.actors.concurrency import BLOCK_MIN_S, BlockingVerdict, Runner
from shardyard.protocol import WORK, BatchReply, HostRequest, WireBatch

NAP_S = 0.05  # how long a "blocking" item waits


def _max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one moment (an end at t closes before a start at t)."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


def _overlap_per_actor(outputs: list[tuple[Any, float, float, int]]) -> dict[int, int]:
    by_pid: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for _, start, end, pid in outputs:
        by_pid[pid].append((start, end))
    return {pid: _max_overlap(iv) for pid, iv in by_pid.items()}


class _Gauge:
    """Counts calls in progress (from any thread) and remembers the most at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.now = 0
        self.most = 0

    def __enter__(self) -> None:
        with self._lock:
            self.now += 1
            self.most = max(self.most, self.now)

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self.now -= 1


# --- the policy, pure -------------------------------------------------------------------------


def test_a_stretch_that_computes_or_is_preempted_does_not_block() -> None:
    v = BlockingVerdict()
    assert not v.on_loop(wall=0.5, cpu=0.5, switches=3)  # computed all along
    assert not v.on_loop(wall=0.5, cpu=0.3, switches=3)  # waited less than it computed
    assert not v.on_loop(wall=BLOCK_MIN_S / 2, cpu=0.0, switches=1)  # too short to matter
    assert not v.on_loop(wall=0.010, cpu=0.001, switches=0)  # preempted, never gave way
    # A busy process: the GIL now and then, not once per call.
    assert not v.on_loop(wall=0.010, cpu=0.0001, switches=2, calls=64)
    assert not v.blocking


def test_one_stretch_alone_never_decides() -> None:
    v = BlockingVerdict()
    assert not v.on_loop(wall=0.010, cpu=0.0001, switches=1)  # one GIL wait, say
    assert not v.on_loop(wall=0.0001, cpu=0.0001, switches=0)  # then fast again
    # One long GIL wait (Ray unpickling the next call) counts several switches.
    assert not v.on_loop(wall=0.006, cpu=0.0001, switches=3, calls=3)
    assert not v.on_loop(wall=0.0065, cpu=0.0004, switches=3, calls=7)  # then computes
    assert not v.on_loop(wall=0.010, cpu=0.0001, switches=1)
    assert v.on_loop(wall=0.010, cpu=0.0001, switches=1)  # twice in a row: it blocks


def test_a_stretch_that_waits_blocks_until_calls_in_threads_are_fast() -> None:
    v = BlockingVerdict()
    assert not v.on_loop(wall=0.010, cpu=0.0001, switches=1, calls=1)
    assert v.on_loop(wall=0.030, cpu=0.0001, switches=3, calls=3)
    assert v.in_threads(calls=64, wall=64 * 0.010)  # still slow: stays in threads
    assert not v.in_threads(calls=1024, wall=0.010)  # 10 us a call: back to the loop
    assert not v.in_threads(calls=0, wall=0.0)


# --- the runner, without Ray ----------------------------------------------------------------


def test_a_fast_handler_never_leaves_the_loop() -> None:
    runner = Runner(8)
    loop_thread = threading.get_ident()
    threads: set[int] = set()

    def inc(x: int) -> int:
        threads.add(threading.get_ident())
        return x + 1

    for _ in range(20):
        out, failures = asyncio.run(runner.per_item(inc, list(range(1000))))
        assert out == list(range(1, 1001)) and failures == []
    assert threads == {loop_thread}
    assert not runner.verdict.blocking and runner._threads is None


def test_blocking_items_fan_out_over_threads_in_position_order() -> None:
    runner = Runner(8)
    gauge = _Gauge()

    def nap(x: int) -> int:
        with gauge:
            time.sleep(0.02)
        return x * 2

    out, failures = asyncio.run(runner.per_item(nap, list(range(40))))
    assert out == [x * 2 for x in range(40)] and failures == []
    assert runner.verdict.blocking
    assert gauge.most == 8  # max_concurrency threads at once, never more


def test_items_failing_in_threads_fail_alone_with_their_tracebacks() -> None:
    runner = Runner(8)
    runner.verdict.blocking = True  # every item in a thread

    def picky(x: int) -> int:
        time.sleep(0.005)
        if x == 3:
            raise ValueError(f"bad item {x}")
        if x == 5:
            raise SystemExit("exit from a handler")
        if x == 7:
            raise KeyboardInterrupt
        return x

    out, failures = asyncio.run(runner.per_item(picky, list(range(12))))
    assert [f.position for f in failures] == [3, 5, 7]
    assert out == [None if x in (3, 5, 7) else x for x in range(12)]
    assert "bad item 3" in failures[0].traceback and "in picky" in failures[0].traceback
    assert isinstance(failures[1].exception(), SystemExit)
    assert isinstance(failures[2].exception(), KeyboardInterrupt)


def test_a_shards_items_run_one_after_another_in_order_off_the_loop() -> None:
    runner = Runner(8)
    gauge = _Gauge()
    seen: list[int] = []
    loop_thread = threading.get_ident()
    threads: set[int] = set()

    def apply(x: int) -> int:
        with gauge:
            threads.add(threading.get_ident())
            time.sleep(0.003)
            seen.append(x)
        return len(seen)

    out, failures = asyncio.run(runner.per_item(apply, list(range(30)), fan_out=False))
    assert seen == list(range(30)) and out == list(range(1, 31)) and failures == []
    assert gauge.most == 1
    assert threads - {loop_thread}  # the rest of the batch went to a thread


def test_max_concurrency_one_runs_one_call_at_a_time() -> None:
    runner = Runner(1)
    gauge = _Gauge()

    def nap(x: int) -> int:
        with gauge:
            time.sleep(0.005)
        return x

    async def both() -> None:
        # Two batches at once (two shards) against the same runner.
        a, b = await asyncio.gather(
            runner.per_item(nap, list(range(10))), runner.per_item(nap, list(range(10, 20)))
        )
        assert a[0] == list(range(10)) and b[0] == list(range(10, 20))

    asyncio.run(both())
    assert gauge.most == 1 and runner._threads is None  # all on the loop, as before


def test_async_items_overlap_up_to_max_concurrency_in_position_order() -> None:
    runner = Runner(8)
    active = {"now": 0, "most": 0}

    async def nap(x: int) -> int:
        if x % 3 == 0:
            return x  # finishes without suspending
        active["now"] += 1
        active["most"] = max(active["most"], active["now"])
        await asyncio.sleep(0.01)
        active["now"] -= 1
        if x == 10:
            raise ValueError("bad item 10")
        return x

    out, failures = asyncio.run(runner.per_item_async(nap, list(range(40))))
    assert out == [None if x == 10 else x for x in range(40)]
    assert [f.position for f in failures] == [10]
    assert "bad item 10" in failures[0].traceback
    assert active["most"] == 8


def test_async_items_of_a_shard_never_overlap() -> None:
    runner = Runner(8)
    active = {"now": 0, "most": 0}
    seen: list[int] = []

    async def apply(x: int) -> int:
        active["now"] += 1
        active["most"] = max(active["most"], active["now"])
        await asyncio.sleep(0.001)
        seen.append(x)
        active["now"] -= 1
        return x

    out, _ = asyncio.run(runner.per_item_async(apply, list(range(20)), concurrent=False))
    assert out == seen == list(range(20)) and active["most"] == 1


def test_handler_threads_are_daemons() -> None:
    runner = Runner(4)
    runner.verdict.blocking = True
    asyncio.run(runner.per_item(lambda x: time.sleep(0.002) or x, list(range(8))))
    ours = [t for t in threading.enumerate() if t.name.startswith("shardyard-handler-")]
    assert ours and all(t.daemon for t in ours)


# --- pools on Ray -----------------------------------------------------------------------------


def _sync_nap(x: Any) -> tuple[Any, float, float, int]:
    start = time.time()
    time.sleep(NAP_S)
    return x, start, time.time(), os.getpid()


async def _async_nap(x: Any) -> tuple[Any, float, float, int]:
    start = time.time()
    await asyncio.sleep(NAP_S)
    return x, start, time.time(), os.getpid()


@pytest.mark.parametrize("keyed", [False, True], ids=["keyless", "keyed"])
@pytest.mark.parametrize("handler", [_sync_nap, _async_nap], ids=["sync", "async"])
def test_a_pool_runs_waiting_items_of_one_actor_at_the_same_time(
    ray_local: Any, handler: Any, keyed: bool
) -> None:
    items = list(range(96))
    with ShardPool(handler, num_actors=2, num_shards=16) as pool:
        out = pool.map(items, keys=[str(i) for i in items] if keyed else None, timeout=120)
    assert [o[0] for o in out] == items
    overlap = _overlap_per_actor(out)
    assert len(overlap) == 2
    # Serially it would be 1; 96 items of 50 ms on 2 actors leave room for far more.
    assert min(overlap.values()) >= 4, overlap


@pytest.mark.parametrize("handler", [_sync_nap, _async_nap], ids=["sync", "async"])
def test_max_concurrency_one_is_serial_per_actor(ray_local: Any, handler: Any) -> None:
    items = list(range(24))
    with ShardPool(handler, num_actors=2, num_shards=8, max_concurrency=1) as pool:
        out = pool.map(items, keys=items, timeout=120)
    assert [o[0] for o in out] == items
    assert set(_overlap_per_actor(out).values()) == {1}


class _Sequence(Shard):
    """Keeps each key's items in the order they were applied; never run twice at once."""

    def setup(self, shard_id: int) -> None:
        self.seen: dict[int, list[int]] = defaultdict(list)
        self.inside = 0
        self.most_inside = 0

    def _enter(self) -> float:
        self.inside += 1
        self.most_inside = max(self.most_inside, self.inside)
        return time.time()

    def _leave(self, key: int, x: int, start: float) -> tuple[int, float, float, int, int]:
        self.seen[key].append(x)
        self.inside -= 1
        return x, start, time.time(), os.getpid(), self.shard_id

    def result(self) -> tuple[dict[int, list[int]], int]:
        return dict(self.seen), self.most_inside


class _SyncSequence(_Sequence):
    def process_item(self, item: tuple[int, int]) -> Any:
        key, x = item
        start = self._enter()
        time.sleep(0.01)
        return self._leave(key, x, start)


class _AsyncSequence(_Sequence):
    async def process_item(self, item: tuple[int, int]) -> Any:
        key, x = item
        start = self._enter()
        await asyncio.sleep(0.01)
        return self._leave(key, x, start)


@pytest.mark.parametrize("cls", [_SyncSequence, _AsyncSequence], ids=["sync", "async"])
def test_a_shard_applies_its_items_in_order_one_at_a_time_while_shards_overlap(
    ray_local: Any, cls: type[_Sequence]
) -> None:
    keys = [i % 24 for i in range(240)]
    items = [(k, i) for i, k in enumerate(keys)]
    with ShardPool(cls, num_actors=2, num_shards=8, checkpoint_every=None) as pool:
        out = pool.map(items, keys=keys, timeout=120)
        parts = pool.results()
    assert [o[0] for o in out] == list(range(240))
    expected: dict[int, list[int]] = defaultdict(list)
    for k, i in items:
        expected[k].append(i)
    seen: dict[int, list[int]] = {}
    for part, most_inside in parts.values():
        assert most_inside == 1  # never two items of one shard at once
        seen.update(part)
    assert seen == expected  # per key, exactly once each, in submission order
    by_shard: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for _, start, end, _, sid in out:
        by_shard[sid].append((start, end))
    assert all(_max_overlap(iv) == 1 for iv in by_shard.values())
    assert max(_overlap_per_actor([(o[0], o[1], o[2], o[3]) for o in out]).values()) >= 2


def _picky(x: int) -> int:
    time.sleep(0.01)
    if x % 10 == 3:
        raise ValueError(f"bad item {x}")
    if x == 25:
        raise SystemExit("exit from a handler thread")
    return x


async def _apicky(x: int) -> int:
    await asyncio.sleep(0.01)
    if x % 10 == 3:
        raise ValueError(f"bad item {x}")
    return x


@pytest.mark.parametrize("handler", [_picky, _apicky], ids=["sync", "async"])
@pytest.mark.parametrize("keyed", [False, True], ids=["keyless", "keyed"])
def test_a_failing_item_fails_alone_with_its_traceback(
    ray_local: Any, handler: Any, keyed: bool
) -> None:
    items = list(range(60))
    with ShardPool(handler, num_actors=2, num_shards=8) as pool:
        out = pool.map(items, keys=items if keyed else None, return_exceptions=True, timeout=120)
    for x, o in zip(items, out, strict=True):
        if x % 10 == 3:
            assert isinstance(o, TaskError) and isinstance(o.cause, ValueError)
            assert f"bad item {x}" in o.remote_traceback
        elif x == 25 and handler is _picky:
            assert isinstance(o, TaskError) and isinstance(o.cause, SystemExit)
        else:
            assert o == x


class _Slow(Shard):
    """Each item waits; the log shows whether a batch was read half-way."""

    started: str = ""  # a file each item appends to when it starts (set per test)

    def setup(self, shard_id: int) -> None:
        self.applied: list[int] = []
        self.inside = False

    def process_item(self, x: int) -> None:
        self.inside = True
        with open(self.started, "a") as f:
            f.write(f"{x}\n")
        time.sleep(0.03)
        self.applied.append(x)
        self.inside = False

    def result(self) -> tuple[bool, list[int]]:
        return self.inside, list(self.applied)


def test_state_is_read_only_between_batches_while_one_runs_in_a_thread(
    ray_local: Any, tmp_path: Path
) -> None:
    started = tmp_path / "started.txt"
    started.touch()
    cls = type("Slow", (_Slow,), {"started": str(started)})
    actor = remote_shard_actor().remote(cls, False, 0)
    try:
        ray.get(actor.host.remote([HostRequest(0, 1, None), HostRequest(1, 1, None)]))
        items = list(range(20))
        ref = actor.run.remote([WireBatch(0, 1, 0, WORK, items, False)])
        deadline = time.monotonic() + 60
        while len(started.read_text().split()) < 3:  # a few items in: it runs in a thread
            assert time.monotonic() < deadline, "the batch never started"
            time.sleep(0.01)
        # Asked now, each of them waits for the batch to end, and none holds up stats.
        asked = [
            actor.results.remote(),
            actor.snapshots.remote(),
            actor.reduce_local.remote(lambda a, b: (a[0] or b[0], a[1] + b[1])),
        ]
        stats = ray.get(actor.stats.remote(), timeout=30)
        assert stats["shards"][0]["items"] == 0  # the batch is still running
        results, snapshots, reduced = ray.get(asked, timeout=60)
        assert results[1][0] == (1, (False, items))
        from ray import cloudpickle

        assert cloudpickle.loads(snapshots[1][0][1])["applied"] == items
        assert reduced[2] == (False, items)
        reply = ray.get(ref, timeout=60).replies[0]
        assert isinstance(reply, BatchReply) and reply.failures == []
    finally:
        ray.kill(actor, no_restart=True)


def _hang_or_nap(x: str) -> str:
    time.sleep(300 if x == "hang" else 0.01)
    return x


def test_a_hung_handler_holds_up_neither_other_shards_nor_stats_nor_close(
    ray_local: Any,
) -> None:
    pool = ShardPool(_hang_or_nap, num_actors=1, num_shards=4)
    try:
        assert pool.map(["a", "b"], keys=["a", "b"], timeout=60) == ["a", "b"]  # blocks seen
        stuck = pool.submit("hang", key="hang")
        hung_shard = int(pool.shard_of(["hang"])[0])
        others = [f"k{i}" for i in range(200)]
        elsewhere = [
            k for k, s in zip(others, pool.shard_of(others), strict=True) if s != hung_shard
        ]
        assert pool.map(elsewhere, keys=elsewhere, timeout=60) == elsewhere
        assert not stuck.done()
        assert pool.stats(timeout=30) is not None
    finally:
        t0 = time.monotonic()
        pool.close(wait=False)
        assert time.monotonic() - t0 < 60


def test_max_concurrency_is_validated_by_name() -> None:
    assert PoolConfig().max_concurrency == 64
    for bad in (0, 1025):
        with pytest.raises(pydantic.ValidationError) as info:
            PoolConfig(max_concurrency=bad)
        assert info.value.errors()[0]["loc"] == ("max_concurrency",)
    with pytest.raises(pydantic.ValidationError, match="max_concurrency"):
        ShardPool(lambda x: x, max_concurrency=0)


# --- found by review: timeouts inside async handlers, per-key order of keyed functions --------


class _TimedShard(Shard):
    def setup(self, shard_id: int) -> None:
        self.seen: dict[str, int] = defaultdict(int)

    async def process_item(self, x: int) -> tuple[str, int]:
        try:
            async with asyncio.timeout(0.2):
                await asyncio.sleep(2.0 if x % 5 == 0 else 0.01)
            outcome = "ok"
        except TimeoutError:
            outcome = "timeout"
        self.seen[outcome] += 1
        return outcome, x

    def result(self) -> dict[str, int]:
        return dict(self.seen)


async def _timed(x: int) -> str:
    try:
        async with asyncio.timeout(0.2):
            await asyncio.sleep(2.0 if x % 5 == 0 else 0.01)
        return "ok"
    except TimeoutError:
        return "timeout"


@pytest.mark.parametrize("keyed", [True, False])
def test_an_asyncio_timeout_in_a_handler_ends_only_its_item(ray_local: Any, keyed: bool) -> None:
    n = 100
    keys = list(range(n)) if keyed else None
    expected = ["timeout" if x % 5 == 0 else "ok" for x in range(n)]
    with ShardPool(_timed, num_actors=1, num_shards=8) as pool:
        assert pool.map(range(n), keys=keys, timeout=120) == expected
    with ShardPool(_TimedShard, num_actors=1, num_shards=8) as pool:
        out = pool.map(range(n), keys=list(range(n)), timeout=120)
        assert [o for o, _ in out] == expected
        totals: dict[str, int] = defaultdict(int)
        for part in pool.results().values():
            for k, v in part.items():
                totals[k] += v
        assert dict(totals) == {"ok": 80, "timeout": 20}  # each item applied once


def _append_in_order(tmp: str, key_and_seq: tuple[int, int]) -> int:
    key, seq = key_and_seq
    time.sleep(0.002)  # blocks: the runner moves it to threads
    with open(os.path.join(tmp, f"{key}.log"), "a") as f:
        f.write(f"{seq}\n")
    return seq


def test_a_keyed_blocking_function_sees_each_keys_items_in_order(
    ray_local: Any, tmp_path: Path
) -> None:
    import functools

    items = [(i % 8, i) for i in range(800)]
    fn = functools.partial(_append_in_order, str(tmp_path))
    with ShardPool(fn, num_actors=2, num_shards=4) as pool:
        assert pool.map(items, keys=[k for k, _ in items], timeout=120) == list(range(800))
    for key in range(8):
        seqs = [int(s) for s in (tmp_path / f"{key}.log").read_text().split()]
        assert seqs == [i for k, i in items if k == key]
