"""shardyard.ActorPool against Ray's own ActorPool tests, then its additions.

The first part ports Ray's ``python/ray/tests/test_actor_pool.py`` (the Ray 2.60 version of
the file, whose ``ActorPool`` evicts dead actors) case by case, under the same test names:
the bodies are Ray's with three changes only: ``ActorPool`` is shardyard's, the shared
``ray_local`` fixture replaces Ray's per-test ``ray.init(num_cpus=4)`` / ``ray.shutdown()``,
and every actor a test starts is killed when it ends (``kill_later``). Two cases follow
that an unmerged Ray PR (ray-project/ray#39250) added to the file for bugs Ray 2.60 still
has (``ray.wait`` on a list of refs, and ``get_next_unordered(..., ignore_if_timedout=True)``
crashing with ``UnboundLocalError``).

The second part covers the additions: futures from ``submit``, retries that skip a dead
actor, backpressure (``max_pending_submits``) and the async twins.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any
from unittest.mock import MagicMock

import pytest
import ray
import ray.util

from shardyard.actor_pool import ActorPool

# A generous guard against a hang (the suite's default is 300 s).
GUARD = 120


@pytest.fixture
def kill_later() -> Iterator[list[Any]]:
    """Actor handles to kill when the test ends (the Ray session is shared)."""
    handles: list[Any] = []
    yield handles
    for handle in handles:
        with contextlib.suppress(Exception):
            ray.kill(handle)


# --- Ray's python/ray/tests/test_actor_pool.py, case by case ---------------------------------


def test_get_next(ray_local: Any, kill_later: list[Any]) -> None:
    @ray.remote
    class MyActor:
        def __init__(self):
            pass

        def f(self, x):
            return x + 1

        def double(self, x):
            return 2 * x

    actors = [MyActor.remote() for _ in range(4)]
    kill_later += actors
    pool = ActorPool(actors)
    for i in range(5):
        pool.submit(lambda a, v: a.f.remote(v), i)
        assert pool.get_next() == i + 1


def test_get_next_unordered(ray_local: Any, kill_later: list[Any]) -> None:
    @ray.remote
    class MyActor:
        def __init__(self):
            pass

        def f(self, x):
            return x + 1

        def double(self, x):
            return 2 * x

    actors = [MyActor.remote() for _ in range(4)]
    kill_later += actors
    pool = ActorPool(actors)

    total = []

    for i in range(5):
        pool.submit(lambda a, v: a.f.remote(v), i)
    while pool.has_next():
        total += [pool.get_next_unordered()]

    assert all(elem in [1, 2, 3, 4, 5] for elem in total)


def test_map(ray_local: Any, kill_later: list[Any]) -> None:
    @ray.remote
    class MyActor:
        def __init__(self):
            pass

        def f(self, x):
            return x + 1

        def double(self, x):
            return 2 * x

    actors = [MyActor.remote() for _ in range(4)]
    kill_later += actors
    pool = ActorPool(actors)

    index = 0
    for v in pool.map(lambda a, v: a.double.remote(v), range(5)):
        assert v == 2 * index
        index += 1  # noqa: SIM113 (Ray's body, kept as it is)


def test_map_eager(ray_local: Any, kill_later: list[Any]) -> None:
    """Verify that submit is called eagerly when map is called.

    If the results are directly yielded, then the submit calls are not
    executed until the results are consumed.
    """

    @ray.remote
    class MyActor:
        def f(self, x):
            pass

    actor = MyActor.remote()
    kill_later.append(actor)
    pool = ActorPool([actor])
    pool.submit = MagicMock()  # type: ignore[method-assign]

    pool.map(lambda a, v: a.f.remote(v), range(1))
    pool.submit.assert_called()


def test_map_unordered(ray_local: Any, kill_later: list[Any]) -> None:
    @ray.remote
    class MyActor:
        def __init__(self):
            pass

        def f(self, x):
            return x + 1

        def double(self, x):
            return 2 * x

    actors = [MyActor.remote() for _ in range(4)]
    kill_later += actors
    pool = ActorPool(actors)

    total = []
    for v in pool.map(lambda a, v: a.double.remote(v), range(5)):
        total += [v]

    assert all(elem in [0, 2, 4, 6, 8] for elem in total)


def test_map_gh23107(ray_local: Any, kill_later: list[Any]) -> None:
    # Ray's test sleeps 40 s; 5 s checks the same (the map's values do not wait for the
    # sleeping call, whose actor stays busy) and keeps the suite short.
    sleep_time = 5

    # Reference - https://github.com/ray-project/ray/issues/23107
    @ray.remote
    class DummyActor:
        async def identity(self, s):
            if s == 6:
                await asyncio.sleep(sleep_time)
            return s, time.time()

    def func(a, v):
        return a.identity.remote(v)

    map_values = [1, 2, 3, 4, 5]

    map_actors = [DummyActor.remote() for i in range(2)]
    kill_later += map_actors
    pool_map = ActorPool(map_actors)
    pool_map.submit(func, 6)
    start_time = time.time()
    gen = pool_map.map(func, map_values)
    out = list(gen)
    assert all(elem[0] in [1, 2, 3, 4, 5] for elem in out)
    # Ray's second check reads the spent generator again (so it holds vacuously); here it
    # reads the values: each ran before the sleeping call could have ended.
    assert all(abs(elem[1] - start_time) < sleep_time for elem in out)

    unordered_actors = [DummyActor.remote() for i in range(2)]
    kill_later += unordered_actors
    pool_map_unordered = ActorPool(unordered_actors)
    pool_map_unordered.submit(func, 6)
    start_time = time.time()
    gen = pool_map_unordered.map_unordered(func, map_values)
    out = list(gen)
    assert sorted(elem[0] for elem in out) == [1, 2, 3, 4, 5]
    # map_unordered first waits out the earlier submit (Ray polls get_next_unordered with
    # timeout=0 until it returns), so here the values run after the sleep: no timing check.


def test_get_next_timeout(ray_local: Any, kill_later: list[Any]) -> None:
    @ray.remote
    class MyActor:
        def __init__(self):
            pass

        def f(self, x):
            while True:
                x = x + 1
                time.sleep(1)
            return None

        def double(self, x):
            return 2 * x

    actors = [MyActor.remote() for _ in range(4)]
    kill_later += actors
    pool = ActorPool(actors)
    pool.submit(lambda a, v: a.f.remote(v), 0)
    with pytest.raises(TimeoutError):
        pool.get_next_unordered(timeout=0.1)


def test_get_next_unordered_timeout(ray_local: Any, kill_later: list[Any]) -> None:
    @ray.remote
    class MyActor:
        def __init__(self):
            pass

        def f(self, x):
            while True:
                x + 1
                time.sleep(1)
            return

        def double(self, x):
            return 2 * x

    actors = [MyActor.remote() for _ in range(4)]
    kill_later += actors
    pool = ActorPool(actors)

    pool.submit(lambda a, v: a.f.remote(v), 0)
    with pytest.raises(TimeoutError):
        pool.get_next_unordered(timeout=0.1)


def test_multiple_returns(ray_local: Any, kill_later: list[Any]) -> None:
    @ray.remote
    class Foo:
        @ray.method(num_returns=2)
        def bar(self):
            return 1, 2

    actors = [Foo.remote() for _ in range(2)]
    kill_later += actors
    pool = ActorPool(actors)
    for _ in range(4):
        pool.submit(lambda a, v: a.bar.remote(), None)

    while pool.has_next():
        assert pool.get_next(timeout=None) == [1, 2]


def test_pop_idle(ray_local: Any, kill_later: list[Any]) -> None:
    @ray.remote
    class MyActor:
        def __init__(self):
            pass

        def f(self, x):
            return x + 1

        def double(self, x):
            return 2 * x

    actors = [MyActor.remote()]
    kill_later += actors
    pool = ActorPool(actors)

    pool.submit(lambda a, v: a.double.remote(v), 1)
    assert pool.pop_idle() is None
    assert pool.has_free() is False  # actor is busy
    assert pool.get_next() == 2
    assert pool.has_free()
    pool.pop_idle()  # removes actor from pool
    assert pool.has_free() is False  # no more actors in pool


def test_push(ray_local: Any, kill_later: list[Any]) -> None:
    @ray.remote
    class MyActor:
        def __init__(self):
            pass

        def f(self, x):
            return x + 1

        def double(self, x):
            return 2 * x

    a1, a2, a3 = MyActor.remote(), MyActor.remote(), MyActor.remote()
    kill_later += [a1, a2, a3]
    pool = ActorPool([a1])

    pool.submit(lambda a, v: a.double.remote(v), 1)
    assert pool.has_free() is False  # actor is busy
    with pytest.raises(ValueError):
        pool.push(a1)
    pool.push(a2)
    assert pool.has_free()  # a2 is available

    pool.submit(lambda a, v: a.double.remote(v), 1)
    pool.submit(lambda a, v: a.double.remote(v), 1)
    assert pool.has_free() is False
    assert len(pool._pending_submits) == 1
    pool.push(a3)
    assert pool.has_free() is False  # a3 is used for pending submit
    assert len(pool._pending_submits) == 0


def test_dead_actor_is_evicted(ray_local: Any, kill_later: list[Any]) -> None:
    # https://github.com/ray-project/ray/issues/50313
    @ray.remote
    class MyActor:
        def __init__(self, healthy):
            self.healthy = healthy

        def run(self, x):
            if not self.healthy:
                ray.actor.exit_actor()
            return x

    good = MyActor.remote(True)
    bad = MyActor.remote(False)
    kill_later += [good, bad]
    pool = ActorPool([good, bad])

    results = []
    for i in range(6):
        pool.submit(lambda a, v: a.run.remote(v), i)
        try:  # noqa: SIM105 (Ray's body, kept as it is)
            results.append(pool.get_next_unordered())
        except ray.exceptions.RayActorError:
            pass

    assert sorted(results) == [1, 2, 3, 4, 5]
    assert bad not in pool._idle_actors
    assert len(pool._idle_actors) == 1


def test_task_error_keeps_actor(ray_local: Any, kill_later: list[Any]) -> None:
    # A failing task does not kill the actor, so it must stay in the pool.
    @ray.remote
    class MyActor:
        def run(self, x):
            if x == 0:
                raise ValueError("boom")
            return x

    actor = MyActor.remote()
    kill_later.append(actor)
    pool = ActorPool([actor])

    pool.submit(lambda a, v: a.run.remote(v), 0)
    with pytest.raises(ray.exceptions.RayTaskError):
        pool.get_next()
    assert pool._idle_actors == [actor]

    pool.submit(lambda a, v: a.run.remote(v), 1)
    assert pool.get_next() == 1


def test_unavailable_actor_is_kept(
    ray_local: Any, kill_later: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    @ray.remote
    class MyActor:
        def run(self):
            return 1

    actor = MyActor.remote()
    kill_later.append(actor)
    pool = ActorPool([actor])
    pool.submit(lambda a, _: a.run.remote(), None)

    def raise_unavailable(_):
        raise ray.exceptions.ActorUnavailableError("temporarily unavailable", None)

    monkeypatch.setattr(ray, "get", raise_unavailable)
    with pytest.raises(ray.exceptions.ActorUnavailableError):
        pool.get_next()
    assert pool._idle_actors == [actor]


# --- the cases ray-project/ray#39250 added (Ray 2.60 fails both) -----------------------------


def test_multiple_returns_with_timeout(ray_local: Any, kill_later: list[Any]) -> None:
    """``get_next(timeout=...)`` on a ``num_returns=2`` method (Ray 2.60: TypeError)."""

    @ray.remote
    class Foo:
        @ray.method(num_returns=2)
        def bar(self):
            return 1, 2

    actors = [Foo.remote() for _ in range(2)]
    kill_later += actors
    pool = ActorPool(actors)
    pool.submit(lambda a, v: a.bar.remote(), None)
    assert pool.get_next(timeout=GUARD, ignore_if_timedout=True) == [1, 2]
    pool.submit(lambda a, v: a.bar.remote(), None)
    assert pool.get_next_unordered(timeout=GUARD) == [1, 2]


def test_get_next_unordered_ignore_if_timedout(ray_local: Any, kill_later: list[Any]) -> None:
    """Ray 2.60 crashes (UnboundLocalError); #39250 returned None; Ray's later code, and
    shardyard, drop the oldest call and raise TimeoutError, as ``get_next`` does."""

    @ray.remote
    class MyActor:
        def f(self, x):
            while True:
                time.sleep(1)

        def double(self, x):
            return 2 * x

    actors = [MyActor.remote() for _ in range(2)]
    kill_later += actors
    pool = ActorPool(actors)
    first = pool.submit(lambda a, v: a.f.remote(v), 0)
    pool.submit(lambda a, v: a.f.remote(v), 1)
    with pytest.raises(TimeoutError, match=r"^Timed out waiting for result$"):
        pool.get_next_unordered(timeout=0.1, ignore_if_timedout=False)
    with pytest.raises(TimeoutError, match=r"has been ignored\.$"):
        pool.get_next_unordered(timeout=0.1, ignore_if_timedout=True)
    # The oldest call was dropped; its actor is back in the pool, as get_next does it.
    assert sorted(i for i, _ in pool._future_to_actor.values()) == [1]
    assert len(pool._idle_actors) == 1
    with pytest.raises(TimeoutError, match="has been ignored"):
        first.result(timeout=GUARD)
    assert pool.has_next()  # the other call still runs


# --- Ray parity ----------------------------------------------------------------------------


def test_has_every_public_method_of_rays_actor_pool() -> None:
    ray_public = {n for n in dir(ray.util.ActorPool) if not n.startswith("_")}
    ours = {n for n in dir(ActorPool) if not n.startswith("_")}
    assert ray_public <= ours
    assert ours - ray_public == {"aget_next", "aget_next_unordered", "amap", "amap_unordered"}


def _outcome(call: Any) -> tuple[str, str]:
    try:
        return "value", repr(call())
    except BaseException as exc:  # StopIteration too
        return type(exc).__name__, str(exc)


def test_errors_and_bookkeeping_match_ray(ray_local: Any, kill_later: list[Any]) -> None:
    """The same script against ray.util.ActorPool and ours: same values, errors, state."""

    @ray.remote
    class MyActor:
        def __init__(self, hang=False):
            self.hang = hang

        def double(self, x):
            if self.hang:
                time.sleep(3600)
            return 2 * x

    def twice(a, v):
        return a.double.remote(v)

    def script(cls: Any) -> dict[str, Any]:
        a1, a2, good, hang = (MyActor.remote(h) for h in (False, False, False, True))
        kill_later.extend([a1, a2, good, hang])
        pool = cls([a1])
        seen: dict[str, Any] = {
            "empty get_next": _outcome(pool.get_next),
            "empty get_next_unordered": _outcome(pool.get_next_unordered),
            "empty has_free": pool.has_free(),
            "empty has_next": pool.has_next(),
        }
        pool.submit(twice, 1)
        pool.submit(twice, 2)
        seen |= {
            "busy has_free": pool.has_free(),
            "busy pop_idle": pool.pop_idle(),
            "busy pending": len(pool._pending_submits),
            "push busy": _outcome(lambda: pool.push(a1)),
            "task index": pool._next_task_index,
            "get_next": pool.get_next(),
            "return index": pool._next_return_index,
            "promoted pending": len(pool._pending_submits),
            "get_next_unordered": pool.get_next_unordered(),
            "drained get_next": _outcome(pool.get_next),
        }
        pool.push(a2)
        for v in range(3):
            pool.submit(twice, v)
        seen |= {
            "three unordered": sorted(pool.get_next_unordered() for _ in range(3)),
            "indexes": (pool._next_task_index, pool._next_return_index),
            "map": list(pool.map(twice, [5, 6, 7])),
            "map_unordered": sorted(pool.map_unordered(twice, [1, 2, 3])),
            "end": (pool.has_next(), pool.has_free(), len(pool._idle_actors)),
            "pop_idle": pool.pop_idle() in (a1, a2),
        }
        # get_next after get_next_unordered took the last call first.
        mixed = cls([good, hang])
        mixed.submit(twice, 0)  # the last idle actor: hang
        mixed.submit(twice, 1)
        seen |= {
            "unordered first": mixed.get_next_unordered(),
            "then get_next": _outcome(mixed.get_next),
            "ordered timeout": _outcome(lambda: mixed.get_next_unordered(timeout=0.1)),
        }
        # ignore_if_timedout: the call is dropped and its (still busy) actor comes back.
        stuck = cls([hang])  # behind its hanging call: never ready
        stuck.submit(twice, 3)
        kind, msg = _outcome(lambda: stuck.get_next(timeout=0, ignore_if_timedout=True))
        seen |= {
            "ignored": (kind, msg.split(". The task ")[0], msg.endswith(" has been ignored.")),
            "after ignoring": (stuck.has_next(), stuck.has_free(), stuck._next_return_index),
        }
        return seen

    assert script(ActorPool) == script(ray.util.ActorPool)


# --- futures from submit --------------------------------------------------------------------


@ray.remote
class Worker:
    """Doubles; hangs (until killed) when built with ``hang=True``; ``wait_on`` a gate."""

    def __init__(self, hang: bool = False) -> None:
        self.hang = hang

    def double(self, x: int) -> int:
        if self.hang:
            time.sleep(3600)
        return 2 * x

    def fail(self, x: int) -> int:
        raise ValueError(f"bad {x}")

    def gated(self, gate: Any, x: int) -> int:
        ray.get(gate.wait.remote())
        return 2 * x


@ray.remote
class Gate:
    """Calls to ``wait`` return once ``open`` was called."""

    def __init__(self) -> None:
        self.opened = asyncio.Event()

    async def open(self) -> None:
        self.opened.set()

    async def wait(self) -> None:
        await self.opened.wait()


def double(a: Any, v: int) -> Any:
    return a.double.remote(v)


def test_submit_returns_futures_that_resolve_without_get_next(
    ray_local: Any, kill_later: list[Any]
) -> None:
    actors = [Worker.remote() for _ in range(2)]
    kill_later += actors
    pool = ActorPool(actors)
    futs = [pool.submit(double, v) for v in range(8)]  # 6 of them queued
    assert all(isinstance(f, concurrent.futures.Future) for f in futs)
    assert len(pool._pending_submits) == 6

    # Waiting on the futures alone runs the queued submits: nothing calls get_next.
    _, not_done = concurrent.futures.wait(futs, timeout=GUARD)
    assert not not_done
    assert [f.result() for f in futs] == [2 * v for v in range(8)]
    assert sorted(f.result() for f in concurrent.futures.as_completed(futs, GUARD)) == [
        2 * v for v in range(8)
    ]
    # The results still wait for get_next, as in Ray.
    assert pool.has_next()
    assert [pool.get_next() for _ in range(8)] == [2 * v for v in range(8)]
    assert not pool.has_next()
    assert pool.has_free()


def test_as_completed_on_queued_submits(ray_local: Any, kill_later: list[Any]) -> None:
    actors = [Worker.remote()]
    kill_later += actors
    pool = ActorPool(actors)
    futs = {pool.submit(double, v): v for v in range(5)}
    got = {futs[f]: f.result() for f in concurrent.futures.as_completed(futs, GUARD)}
    assert got == {v: 2 * v for v in range(5)}
    assert sorted(pool.get_next_unordered() for _ in range(5)) == [0, 2, 4, 6, 8]


def test_future_carries_the_task_error(ray_local: Any, kill_later: list[Any]) -> None:
    actor = Worker.remote()
    kill_later.append(actor)
    pool = ActorPool([actor])
    fut = pool.submit(lambda a, v: a.fail.remote(v), 3)
    with pytest.raises(ValueError, match="bad 3"):
        fut.result(timeout=GUARD)
    with pytest.raises(ray.exceptions.RayTaskError):
        pool.get_next()
    assert pool._idle_actors == [actor]


def test_unwaited_futures_keep_rays_semantics(ray_local: Any, kill_later: list[Any]) -> None:
    """Nobody waits on the futures: an actor stays busy until its result is taken."""
    actor = Worker.remote()
    kill_later.append(actor)
    pool = ActorPool([actor])
    first = pool.submit(double, 1)
    second = pool.submit(double, 2)
    ray.wait([pool._index_to_future[0]], timeout=GUARD)  # the call has completed
    assert pool.has_free() is False
    assert len(pool._pending_submits) == 1
    assert pool.get_next() == 2
    assert first.done() and first.result() == 2
    assert len(pool._pending_submits) == 0
    assert second.result(timeout=GUARD) == 4
    assert pool.get_next() == 4


def test_fn_error_on_submit_is_raised_and_keeps_the_actor(
    ray_local: Any, kill_later: list[Any]
) -> None:
    actor = Worker.remote()
    kill_later.append(actor)
    pool = ActorPool([actor])

    def broken(a: Any, v: int) -> Any:
        raise RuntimeError("fn broke")

    with pytest.raises(RuntimeError, match="fn broke"):
        pool.submit(broken, 1)
    assert pool._idle_actors == [actor]
    assert not pool.has_next()

    # Queued, it fails when it is dispatched later: get_next raises it in its turn.
    pool.submit(double, 1)
    queued = pool.submit(broken, 2)
    pool.submit(double, 3)
    assert pool.get_next() == 2
    with pytest.raises(RuntimeError, match="fn broke"):
        pool.get_next()
    assert pool.get_next() == 6
    with pytest.raises(RuntimeError, match="fn broke"):
        queued.result(timeout=0)


# --- retries that skip a dead actor ----------------------------------------------------------


def test_retry_skips_a_killed_actor(ray_local: Any, kill_later: list[Any]) -> None:
    good, victim = Worker.remote(), Worker.remote(hang=True)
    kill_later += [good, victim]
    pool = ActorPool([good, victim], max_retries=1)
    # Ray's pool takes the last idle actor first: value 0 goes to the victim, which hangs
    # on it until it is killed; the rest queue behind the good actor.
    results = pool.map(double, range(8))
    assert pool._future_to_actor[pool._index_to_future[0]][1] == victim
    ray.kill(victim)
    assert list(results) == [2 * v for v in range(8)]  # every value once, in order
    assert victim not in pool._idle_actors
    assert pool._idle_actors == [good]
    assert not pool.has_next()


def test_retry_settles_futures_of_a_killed_actor(ray_local: Any, kill_later: list[Any]) -> None:
    good, victim = Worker.remote(), Worker.remote(hang=True)
    kill_later += [good, victim]
    pool = ActorPool([good, victim], max_retries=2)
    futs = [pool.submit(double, v) for v in range(5)]
    ray.kill(victim)
    assert [f.result(timeout=GUARD) for f in futs] == [0, 2, 4, 6, 8]
    assert sorted(pool.get_next_unordered() for _ in range(5)) == [0, 2, 4, 6, 8]
    assert victim not in pool._idle_actors


def test_max_retries_zero_raises_the_actor_error_like_ray(
    ray_local: Any, kill_later: list[Any]
) -> None:
    good, victim = Worker.remote(), Worker.remote(hang=True)
    kill_later += [good, victim]
    pool = ActorPool([good, victim])
    lost = pool.submit(double, 0)  # the victim
    pool.submit(double, 1)
    ray.kill(victim)
    with pytest.raises(ray.exceptions.RayActorError):
        pool.get_next()
    assert pool.get_next() == 2
    assert victim not in pool._idle_actors
    assert pool._idle_actors == [good]
    with pytest.raises(ray.exceptions.RayActorError):
        lost.result(timeout=0)


def test_retry_with_no_actor_left_raises(ray_local: Any, kill_later: list[Any]) -> None:
    victim = Worker.remote(hang=True)
    kill_later.append(victim)
    pool = ActorPool([victim], max_retries=3)
    fut = pool.submit(double, 0)
    ray.kill(victim)
    with pytest.raises(ray.exceptions.RayActorError):
        pool.get_next(timeout=GUARD)
    assert not pool.has_next()
    assert pool._idle_actors == []
    with pytest.raises(ray.exceptions.RayActorError):
        fut.result(timeout=0)


@ray.remote(max_restarts=0)
class Crasher:
    """Doubles, slowly; its process exits (the actor dies) on a negative value."""

    def work(self, x: int) -> int:
        if x < 0:
            os._exit(1)
        time.sleep(0.01)
        return 2 * x


def work(a: Any, v: int) -> Any:
    return a.work.remote(v)


def test_poison_value_is_not_retried_again(ray_local: Any, kill_later: list[Any]) -> None:
    """A value whose call killed its actor twice fails with the actor error: it takes
    down two actors, not max_retries + 1, and the other values go on."""
    actors = [Crasher.remote() for _ in range(3)]
    kill_later += actors
    pool = ActorPool(actors, max_retries=2)
    values = [*range(4), -1, *range(4, 12)]
    futs = [pool.submit(work, v) for v in values]
    out: list[Any] = []
    for _ in values:
        try:
            out.append(pool.get_next(timeout=GUARD))
        except ray.exceptions.RayActorError:
            out.append("died")
    assert out == [2 * v if v >= 0 else "died" for v in values]
    assert not pool.has_next()
    assert not pool._pending_submits
    assert len(pool._idle_actors) == 1
    with pytest.raises(ray.exceptions.RayActorError):
        futs[4].result(timeout=0)
    assert [f.result(timeout=0) for f in futs if f is not futs[4]] == [
        2 * v for v in values if v >= 0
    ]


@pytest.mark.parametrize("max_retries", [0, 2])
def test_queued_submits_fail_once_no_actor_is_left(
    ray_local: Any, kill_later: list[Any], max_retries: int
) -> None:
    actors = [Crasher.remote() for _ in range(2)]
    kill_later += actors
    pool = ActorPool(actors, max_retries=max_retries)
    futs = [pool.submit(work, v) for v in [-1, -2, 3, 4, 5, 6]]  # both actors die
    assert len(pool._pending_submits) == 4
    for f in futs:  # none stays pending
        with pytest.raises(ray.exceptions.RayActorError):
            f.result(timeout=GUARD)
    assert not pool._pending_submits
    for _ in futs:  # get_next raises the actor error for each, in turn
        with pytest.raises(ray.exceptions.RayActorError):
            pool.get_next(timeout=GUARD)
    with pytest.raises(StopIteration):
        pool.get_next()
    # Later submits fail too (nothing would run them), until an actor is pushed.
    with pytest.raises(ray.exceptions.RayActorError):
        pool.submit(work, 7).result(timeout=GUARD)
    with pytest.raises(ray.exceptions.RayActorError):
        pool.get_next()
    fresh = Crasher.remote()
    kill_later.append(fresh)
    pool.push(fresh)
    assert pool.submit(work, 8).result(timeout=GUARD) == 16
    assert pool.get_next() == 16


# --- backpressure -------------------------------------------------------------------------------


def test_backpressure_bounds_the_queue(ray_local: Any, kill_later: list[Any]) -> None:
    actors = [Worker.remote() for _ in range(2)]
    kill_later += actors
    pool = ActorPool(actors, max_pending_submits=2)
    futs = []
    for v in range(12):
        futs.append(pool.submit(double, v))  # blocks while 2 are queued; nobody takes results
        assert len(pool._pending_submits) <= 2
    assert [f.result(timeout=GUARD) for f in futs] == [2 * v for v in range(12)]
    assert [pool.get_next() for _ in range(12)] == [2 * v for v in range(12)]


def test_backpressure_with_map(ray_local: Any, kill_later: list[Any]) -> None:
    actors = [Worker.remote() for _ in range(2)]
    kill_later += actors
    pool = ActorPool(actors, max_pending_submits=1)
    assert list(pool.map(double, range(10))) == [2 * v for v in range(10)]
    assert sorted(pool.map_unordered(double, range(10))) == [2 * v for v in range(10)]


def test_blocked_submit_wakes_when_another_thread_frees_an_actor(
    ray_local: Any, kill_later: list[Any]
) -> None:
    """A submit blocked on a call that never ends goes on once another thread frees the
    actor (here by ignoring that call)."""
    hang = Worker.remote(hang=True)
    kill_later.append(hang)
    pool = ActorPool([hang], max_pending_submits=1)
    pool.submit(double, 0)  # hangs forever
    pool.submit(double, 1)  # queued: the queue is full
    blocked = threading.Thread(target=pool.submit, args=(double, 2), daemon=True)
    blocked.start()
    with pytest.raises(TimeoutError, match="has been ignored"):
        pool.get_next(timeout=0, ignore_if_timedout=True)
    blocked.join(GUARD)
    assert not blocked.is_alive()
    assert len(pool._pending_submits) == 1  # 1 runs (behind the hanging call), 2 waits


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        ActorPool([], max_retries=-1)
    with pytest.raises(ValueError):
        ActorPool([], max_pending_submits=0)


# --- async twins -------------------------------------------------------------------------------


def test_async_twins(ray_local: Any, kill_later: list[Any]) -> None:
    actors = [Worker.remote() for _ in range(2)]
    kill_later += actors
    pool = ActorPool(actors)

    async def main() -> None:
        assert [v async for v in pool.amap(double, range(6))] == [2 * v for v in range(6)]
        got = sorted([v async for v in pool.amap_unordered(double, range(6))])
        assert got == [2 * v for v in range(6)]
        for v in range(3):
            pool.submit(double, v)
        assert [await pool.aget_next() for _ in range(3)] == [0, 2, 4]
        for v in range(3):
            pool.submit(double, v)
        assert sorted([await pool.aget_next_unordered() for _ in range(3)]) == [0, 2, 4]
        with pytest.raises(StopAsyncIteration, match="No more results to get"):
            await pool.aget_next()
        with pytest.raises(StopAsyncIteration):
            await pool.aget_next_unordered()
        fut = pool.submit(double, 21)
        assert await fut == 42
        assert await pool.aget_next() == 42

    asyncio.run(main())


@pytest.mark.timeout(GUARD)
def test_async_twins_do_not_block_the_loop(ray_local: Any, kill_later: list[Any]) -> None:
    """The result can only come once this loop opens the gate: a blocked loop would hang."""
    actors = [Worker.remote()]
    gate = Gate.remote()
    kill_later += [*actors, gate]
    pool = ActorPool(actors)

    async def main() -> list[Any]:
        pool.submit(lambda a, v: a.gated.remote(gate, v), 1)
        pool.submit(lambda a, v: a.gated.remote(gate, v), 2)  # queued
        ordered = asyncio.ensure_future(pool.aget_next())
        await asyncio.sleep(0.1)
        assert not ordered.done()
        with pytest.raises(TimeoutError):
            await pool.aget_next(timeout=0.1)
        await gate.open.remote()
        first = await asyncio.wait_for(ordered, GUARD)
        second = await asyncio.wait_for(pool.aget_next_unordered(), GUARD)
        return [first, second]

    assert asyncio.run(main()) == [2, 4]


async def _cancel_once_submitted(pool: ActorPool, consume: Any, submitted: int) -> None:
    """Run ``consume`` (a coroutine iterating an amap) as a task, cancel it once the pool
    has submitted ``submitted`` values, and check that the cancel reached it."""
    task = asyncio.create_task(consume)
    while pool._next_task_index < submitted:
        await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def _pool_is_clean_and_usable(pool: ActorPool) -> None:
    """Nothing of a cancelled map is left, and the pool maps and submits again."""
    assert not pool.has_next()
    assert not pool._pending_submits
    assert not pool._tasks
    assert list(pool.map(work, range(1000, 1005))) == [2 * v for v in range(1000, 1005)]
    pool.submit(work, 7)
    assert pool.get_next(timeout=GUARD) == 14
    with pytest.raises(StopIteration):
        pool.get_next()


@pytest.mark.parametrize("ordered", [True, False])
@pytest.mark.timeout(GUARD)
def test_cancelled_amap_stops_submitting_and_drops_its_results(
    ray_local: Any, kill_later: list[Any], ordered: bool
) -> None:
    """Cancelling an amap whose submitting thread is blocked by backpressure stops that
    thread; its values never come out of a later map or get_next.

    The map submits its 400 values eagerly (as Ray's does) in a worker thread, held
    back by ``max_pending_submits=2``: 400 calls of 10 ms on 2 actors keep that thread
    submitting for about 2 s, and the cancel comes once it has submitted 3.
    """
    actors = [Crasher.remote() for _ in range(2)]
    kill_later += actors
    pool = ActorPool(actors, max_pending_submits=2)
    amap = pool.amap if ordered else pool.amap_unordered

    async def main() -> list[int]:
        got: list[int] = []

        async def consume() -> None:
            async for v in amap(work, range(400)):
                got.append(v)

        await _cancel_once_submitted(pool, consume(), 3)
        return got

    got = asyncio.run(main())
    assert got == []  # results come only once every value is submitted
    submitted = pool._next_task_index
    assert submitted < 400
    time.sleep(0.5)
    assert pool._next_task_index == submitted  # the submitting thread stopped
    _pool_is_clean_and_usable(pool)


@pytest.mark.parametrize("ordered", [True, False])
@pytest.mark.timeout(GUARD)
def test_amap_consumer_cancelled_mid_stream_stops_there(
    ray_local: Any, kill_later: list[Any], ordered: bool
) -> None:
    """Results already in hand still give the loop a turn per item: a consumer cancelled
    after 3 values stops at 3 (not after draining every ready result), and the map's
    other results are dropped."""
    actors = [Crasher.remote() for _ in range(2)]
    kill_later += actors
    pool = ActorPool(actors)
    amap = pool.amap if ordered else pool.amap_unordered

    async def main() -> list[int]:
        got: list[int] = []

        async def consume() -> None:
            async for v in amap(work, range(40)):
                if not got:  # let every other result arrive: they are all in hand now
                    await asyncio.sleep(0.5)
                got.append(v)
                if len(got) == 3:
                    task.cancel()

        task = asyncio.create_task(consume())
        with pytest.raises(asyncio.CancelledError):
            await task
        return got

    got = asyncio.run(main())
    assert len(got) == 3
    if ordered:
        assert got == [0, 2, 4]
    _pool_is_clean_and_usable(pool)


@pytest.mark.timeout(GUARD)
def test_a_map_after_a_cancelled_amap_whose_calls_still_run_does_not_wait_for_them(
    ray_local: Any, kill_later: list[Any]
) -> None:
    """Both actors still run a cancelled amap's calls (held by a gate), and a submit waits
    behind them: the next map ignores that submit at once (as Ray's map ignores earlier
    results not ready) instead of polling for it, with the pool lock held, until the
    dropped calls end; its own values then wait for an actor and come out exact."""
    actors = [Worker.remote() for _ in range(2)]
    gate = Gate.remote()
    kill_later += [*actors, gate]
    pool = ActorPool(actors)

    async def consume() -> None:
        async for _ in pool.amap(lambda a, v: a.gated.remote(gate, v), [0, 1]):
            pass

    asyncio.run(_cancel_once_submitted(pool, consume(), 2))
    queued = pool.submit(double, 99)  # both actors are busy with dropped calls
    assert pool.has_next()
    started: dict[str, Any] = {}
    mapping = threading.Thread(target=lambda: started.setdefault("it", pool.map(double, [1, 2])))
    mapping.start()
    mapping.join(timeout=30)  # a guard: before the fix, map() waited for the gate forever
    assert not mapping.is_alive(), "map() waited for the dropped calls"
    with pytest.raises(TimeoutError, match="ignored"):
        queued.result(timeout=0)
    ray.get(gate.open.remote())
    assert list(started["it"]) == [2, 4]
    assert not pool.has_next()


def test_await_futures_of_queued_submits(ray_local: Any, kill_later: list[Any]) -> None:
    actors = [Worker.remote()]
    kill_later += actors
    pool = ActorPool(actors)

    async def main() -> list[int]:
        futs = [pool.submit(double, v) for v in range(4)]
        return list(await asyncio.wait_for(asyncio.gather(*futs), GUARD))

    assert asyncio.run(main()) == [0, 2, 4, 6]
    assert [pool.get_next() for _ in range(4)] == [0, 2, 4, 6]


if __name__ == "__main__":
    sys.exit(pytest.main(["-sv", __file__]))
