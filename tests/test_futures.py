"""ShardFuture with a shared condition behaves like a concurrent.futures.Future."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading

import pytest

from shardyard.scheduler.futures import ShardFuture, resolve_many


def test_shared_condition_futures_resolve_in_bulk() -> None:
    cond = threading.Condition()
    futs = [ShardFuture(key=i, condition=cond) for i in range(5)]
    seen: list[int] = []
    futs[0].add_done_callback(lambda f: seen.append(f.result()))
    waiter = threading.Thread(target=lambda: seen.append(futs[4].result(timeout=10) * 10))
    waiter.start()
    resolve_many(cond, futs, [0, 1, 2, 3, 4], {2: ValueError("boom")})
    waiter.join(10)
    assert seen == [0, 40] or seen == [40, 0]
    assert futs[1].result() == 1
    with pytest.raises(ValueError, match="boom"):
        futs[2].result()
    assert isinstance(futs[2].exception(), ValueError)


def test_wait_and_as_completed_work() -> None:
    cond = threading.Condition()
    futs = [ShardFuture(condition=cond) for _ in range(3)]
    timer = threading.Timer(0.05, lambda: resolve_many(cond, futs, [1, 2, 3]))
    timer.start()
    done, pending = concurrent.futures.wait(futs, timeout=10)
    assert len(done) == 3 and not pending
    assert sorted(f.result() for f in concurrent.futures.as_completed(futs)) == [1, 2, 3]


def test_timeout_on_a_shared_condition() -> None:
    cond = threading.Condition()
    a, b = ShardFuture(condition=cond), ShardFuture(condition=cond)
    resolve_many(cond, [b], [1])  # wakes a's waiters too: a must keep waiting
    with pytest.raises(concurrent.futures.TimeoutError):
        a.result(timeout=0.05)


def test_cancelled_future_is_left_alone() -> None:
    cond = threading.Condition()
    f = ShardFuture(condition=cond)
    assert f.cancel()
    resolve_many(cond, [f], [1])
    assert f.cancelled()


def test_awaitable_pending_and_done() -> None:
    cond = threading.Condition()
    f = ShardFuture(condition=cond)

    async def main() -> int:
        asyncio.get_running_loop().call_later(0.01, resolve_many, cond, [f], [7])
        return await f

    assert asyncio.run(main()) == 7


def test_waiters_and_callbacks_added_before_and_after_resolution() -> None:
    # A future makes its waiter and callback lists on first use: wait, as_completed and
    # callbacks added before or after it resolves all see it, each callback once.
    cond = threading.Condition()
    futures = [ShardFuture(condition=cond) for _ in range(3)]
    seen: list[int] = []
    futures[0].add_done_callback(lambda f: seen.append(f.result()))
    timer = threading.Timer(0.2, resolve_many, (cond, futures, [1, 2, 3]))
    timer.start()
    done, pending = concurrent.futures.wait(futures, timeout=10)
    assert len(done) == 3 and not pending
    assert sorted(f.result() for f in concurrent.futures.as_completed(futures)) == [1, 2, 3]
    futures[1].add_done_callback(lambda f: seen.append(f.result()))
    assert seen == [1, 2]
    assert list(futures[2]._waiters) == [] and not futures[2]._done_callbacks
