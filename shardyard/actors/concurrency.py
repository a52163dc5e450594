"""How a shard actor runs handlers concurrently (``PoolConfig.max_concurrency``).

One :class:`Runner` per actor decides where each handler call runs.

**Sync handlers** run on the actor's event loop until they are seen to *block*, then on a
bounded pool of ``max_concurrency`` daemon threads (started lazily):

* *Blocks*: a stretch of calls on the loop is timed (wall clock, the thread's CPU time and
  its voluntary context switches). It blocked when it waited (wall minus CPU) at least
  ``BLOCK_MIN_S`` and at least as long as it computed, and the thread gave up the CPU of
  its own accord (sleep, I/O, a lock; a thread merely preempted on a busy machine has only
  involuntary switches). Per-item calls are timed in stretches of 1, 2, 4, ... items, so a
  batch that starts blocking hands its remaining items to the threads after its first
  blocking stretch; a whole-batch call (``batched=True``, ``Shard.process``) is one
  stretch, and the batches after it go to the threads.
* *Back to the loop*: in the threads, calls are timed too; when a batch's calls took less
  than ``FAST_CALL_S`` each on average (waits included), threads cost more than they
  give, and the next batch starts on the loop again, where a handler that still blocks is
  caught within its first blocking stretch. A one-off wait (a connection opened on the
  first call) thus costs a fast handler one batch in the threads, not its throughput.
* A batch starts on the loop only while no handler call is in a thread, so at most
  ``max_concurrency`` calls are ever in progress. With ``max_concurrency=1`` every call
  runs on the loop, one at a time, as before there were threads: the choice for a handler
  whose objects must stay in the thread that made them (a ``sqlite3`` connection).
* Off the loop, the batches of different shards run in parallel; a shard's batches still
  run one after another in sequence order (``ShardActor._run_one``). The keyless items of
  one batch of a stateless plain per-item function fan out over up to ``max_concurrency``
  threads (outputs in position order, failures per item); keyed items, and a ``Shard``'s
  ``process_item``, run their batch's items one after another in one thread (the order per
  key is kept; a shard's state is never touched by two threads at once).

A fast CPU-bound handler therefore never leaves the loop, and pays four clock reads per
batch (one ``perf_counter`` per stretch besides).

**Async per-item plain functions** run the keyless items of a batch concurrently, at most
``max_concurrency`` at once per actor, each as a task of its own (a handler's
``asyncio.timeout`` cancels the task it started in). Keyed items, and an async
``Shard.process_item``'s, are awaited one after another (each under a permit), so their
order per key is kept; an async whole-batch call holds one permit.

Example:
    >>> import asyncio, time
    >>> runner = Runner(max_concurrency=8)
    >>> out, failures = asyncio.run(runner.per_item(lambda x: time.sleep(0.01) or x, [1, 2, 3]))
    >>> out, failures, runner.verdict.blocking
    ([1, 2, 3], [], True)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import queue
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from shardyard.protocol import USER_ERRORS, ItemFailure

try:
    import resource

    _RUSAGE_THREAD: int | None = resource.RUSAGE_THREAD
except (ImportError, AttributeError):  # not Linux: the switch count is not available
    _RUSAGE_THREAD = None

__all__ = ["BLOCK_MIN_S", "FAST_CALL_S", "BlockingVerdict", "Runner", "run_items"]

BLOCK_MIN_S = 0.001  # a stretch on the loop that waited less than this did not block
FAST_CALL_S = 0.0001  # calls in threads faster than this on average go back to the loop

T = TypeVar("T")
BatchResult = tuple[list[Any], list[ItemFailure]]


def _voluntary_switches() -> int:
    """Times this thread gave up the CPU of its own accord (0 where not measurable)."""
    if _RUSAGE_THREAD is None:
        return 0
    return resource.getrusage(_RUSAGE_THREAD).ru_nvcsw


class BlockingVerdict:
    """Whether a sync handler blocks, from timings of its calls (pure: no clocks of its own).

    A call that blocks (sleep, I/O) gives up the CPU at least once: a stretch of ``calls``
    blocked only when it made at least ``calls`` voluntary switches. A fast handler on a
    busy process also waits and switches now and then (for the GIL, which Ray's own threads
    take, e.g. while they unpickle the next call's arguments; while preempted), and one
    long GIL wait can count several switches; but not stretch after stretch. So one
    stretch alone never decides: it counts only when the one before it blocked too.

    Example:
        >>> v = BlockingVerdict()
        >>> v.on_loop(wall=0.0002, cpu=0.0002, switches=0, calls=1)  # computed: stays
        False
        >>> v.on_loop(wall=0.030, cpu=0.0001, switches=1, calls=3)  # a GIL wait, not 3
        False
        >>> v.on_loop(wall=0.030, cpu=0.0001, switches=3, calls=3)  # slept each time?
        False
        >>> v.on_loop(wall=0.070, cpu=0.0002, switches=7, calls=7)  # and again: it blocks
        True
        >>> v.in_threads(calls=32, wall=0.33)  # 10 ms a call: stays in the threads
        True
        >>> v.in_threads(calls=1024, wall=0.02)  # 20 us a call: back to the loop
        False
    """

    def __init__(self) -> None:
        self.blocking = False  # batches start in the threads
        self._last = False  # the last stretch blocked

    @staticmethod
    def blocked(wall: float, cpu: float, switches: int, calls: int = 1) -> bool:
        """A stretch of ``calls`` that took ``wall`` s, computed ``cpu`` s and switched away
        ``switches`` times of its own accord blocked (see the class docstring)."""
        waited = wall - cpu
        gave_way = switches >= max(1, calls) or _RUSAGE_THREAD is None
        return waited >= BLOCK_MIN_S and waited >= cpu and gave_way

    def on_loop(self, wall: float, cpu: float, switches: int, calls: int = 1) -> bool:
        """Record a stretch of ``calls`` run on the loop; returns whether the handler blocks."""
        blocked = self.blocked(wall, cpu, switches, calls)
        if blocked and self._last:
            self.blocking = True
        self._last = blocked
        return self.blocking

    def in_threads(self, calls: int, wall: float) -> bool:
        """Record ``calls`` run in threads, ``wall`` s in total; returns whether the
        handler still counts as blocking."""
        if calls and wall < FAST_CALL_S * calls:
            self.blocking = False
        return self.blocking


class _DaemonThreads(concurrent.futures.Executor):
    """A bounded pool of daemon threads, each started when work finds no idle one.

    Not a ``ThreadPoolExecutor``: that one joins its threads when the interpreter exits,
    so a handler stuck in one would keep the actor's process from ending.
    """

    def __init__(self, max_workers: int) -> None:
        self._max = max_workers
        self._work: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)  # threads waiting for work
        self._started = 0
        self._lock = threading.Lock()  # the count of threads started

    def submit(
        self, fn: Callable[..., T], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[T]:
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._work.put((fut, fn, args, kwargs))
        if not self._idle.acquire(blocking=False):
            with self._lock:
                if self._started < self._max:
                    self._started += 1
                    name = f"shardyard-handler-{self._started}"
                    threading.Thread(target=self._serve, name=name, daemon=True).start()
        return fut

    def _serve(self) -> None:
        while True:
            fut, fn, args, kwargs = self._work.get()
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn(*args, **kwargs))
                except BaseException as exc:  # handed to the awaiting coroutine
                    fut.set_exception(exc)
            del fut, fn, args, kwargs
            self._idle.release()


def run_items(
    fn: Callable[[Any], Any],
    items: list[Any],
    lo: int,
    hi: int,
    out: list[Any],
    failures: list[ItemFailure],
) -> None:
    """Call ``fn`` once on each of ``items[lo:hi]``, into ``out`` (``None`` where it failed)
    and ``failures``: a failure is caught where it happens, never found by running items
    again (``fn`` may have side effects: a ``Shard``'s ``process_item`` updates its state).

    The loop runs in C: ``list.extend(map(fn, it))`` keeps the outputs before an exception,
    and ``it`` has passed the item that raised, so extending again goes on after it.

    Example:
        >>> out, failures = [None] * 4, []
        >>> run_items(lambda x: 10 // x, [5, 0, 2, 1], 0, 4, out, failures)
        >>> out, [f.position for f in failures]
        ([2, None, 5, 10], [1])
    """
    it = iter(items[lo:hi] if lo or hi < len(items) else items)
    done: list[Any] = []
    while True:
        try:
            done.extend(map(fn, it))
            break
        except USER_ERRORS as exc:
            failures.append(ItemFailure.capture(lo + len(done), exc))
            done.append(None)
    out[lo:hi] = done


def _timed_items(
    fn: Callable[[Any], Any],
    items: list[Any],
    lo: int,
    out: list[Any],
    failures: list[ItemFailure],
) -> tuple[int, float]:
    """:func:`run_items` over ``items[lo:]``; returns how many ran and their wall time."""
    t0 = time.perf_counter()
    run_items(fn, items, lo, len(items), out, failures)
    return len(items) - lo, time.perf_counter() - t0


def _timed_call(fn: Callable[[], T]) -> tuple[float, T]:
    """``fn()`` and its wall time, also when it raises (the time is then lost)."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


class Runner:
    """Where one actor runs its handler's calls (see the module docstring).

    Only the actor's event loop calls it. Args:
        max_concurrency: handler calls in progress at once (threads, suspended coroutines).
    """

    def __init__(self, max_concurrency: int = 64) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        self.max_concurrency = max_concurrency
        self.verdict = BlockingVerdict()
        self._threads: _DaemonThreads | None = None  # started on the first blocking call
        self._in_threads = 0  # units of work handed to the threads and not finished
        self._permits: asyncio.Semaphore | None = None  # of async calls, made on the loop

    # --- sync -------------------------------------------------------------------------------

    def on_loop(self) -> bool:
        """Whether a sync call would now run on the loop: not once the handler blocks, and
        not while calls run in threads (with them, at most max_concurrency in progress)."""
        return self.max_concurrency == 1 or (not self.verdict.blocking and self._in_threads == 0)

    async def per_item(
        self, fn: Callable[[Any], Any], items: list[Any], fan_out: bool = True
    ) -> BatchResult:
        """Call sync ``fn`` once per item; ``fan_out``: items may run at the same time
        (a stateless function), else one after another (a ``Shard``'s ``process_item``)."""
        n = len(items)
        out: list[Any] = [None] * n
        failures: list[ItemFailure] = []
        if self.max_concurrency == 1:  # the loop only (see the module docstring)
            run_items(fn, items, 0, n, out, failures)
            return out, failures
        pos = self._stretches(fn, items, out, failures) if self.on_loop() else 0
        if pos < n:
            if fan_out and n - pos > 1:
                await self._fan_out(fn, items, pos, out, failures)
                failures.sort(key=lambda f: f.position)
            else:
                calls, wall = await self._in_thread(_timed_items, fn, items, pos, out, failures)
                self.verdict.in_threads(calls, wall)
        return out, failures

    def _stretches(
        self,
        fn: Callable[[Any], Any],
        items: list[Any],
        out: list[Any],
        failures: list[ItemFailure],
    ) -> int:
        """Run items on the loop in doubling stretches until they are done or blocked;
        returns how many ran."""
        n = len(items)
        t0, c0, s0 = time.perf_counter(), time.thread_time(), _voluntary_switches()
        pos, step = 0, 1
        while pos < n:
            end = min(n, pos + step)
            run_items(fn, items, pos, end, out, failures)
            pos, step = end, step + step
            wall = time.perf_counter() - t0
            if wall >= BLOCK_MIN_S:
                cpu, switches = time.thread_time() - c0, _voluntary_switches() - s0
                if self.verdict.on_loop(wall, cpu, switches, calls=pos):
                    return pos
        return pos

    async def call(self, fn: Callable[[], T]) -> T:
        """Run sync ``fn`` (a whole batch) on the loop or in a thread (see the docstring)."""
        if self.max_concurrency == 1:
            return fn()
        if not self.on_loop():
            wall, out = await self._in_thread(_timed_call, fn)
            self.verdict.in_threads(1, wall)
            return out
        t0, c0, s0 = time.perf_counter(), time.thread_time(), _voluntary_switches()
        try:
            return fn()
        finally:
            wall = time.perf_counter() - t0
            if wall >= BLOCK_MIN_S:
                cpu, switches = time.thread_time() - c0, _voluntary_switches() - s0
                self.verdict.on_loop(wall, cpu, switches)

    async def _fan_out(
        self,
        fn: Callable[[Any], Any],
        items: list[Any],
        lo: int,
        out: list[Any],
        failures: list[ItemFailure],
    ) -> None:
        """Items ``lo:`` over up to ``max_concurrency`` threads, each taking the next item
        left (a shared counter: ``next`` on ``itertools.count`` is atomic under the GIL)."""
        n = len(items)
        positions = itertools.count(lo)

        def work() -> tuple[int, float]:
            t0 = time.perf_counter()
            calls = 0
            for pos in positions:
                if pos >= n:
                    break
                run_items(fn, items, pos, pos + 1, out, failures)
                calls += 1
            return calls, time.perf_counter() - t0

        workers = min(n - lo, self.max_concurrency)
        done = await asyncio.gather(*(self._in_thread(work) for _ in range(workers)))
        self.verdict.in_threads(sum(c for c, _ in done), sum(w for _, w in done))

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        if self._threads is None:
            self._threads = _DaemonThreads(self.max_concurrency)
        self._in_threads += 1
        try:
            return await asyncio.wrap_future(self._threads.submit(fn, *args))
        finally:
            self._in_threads -= 1

    # --- async ------------------------------------------------------------------------------

    def _semaphore(self) -> asyncio.Semaphore:
        if self._permits is None:
            self._permits = asyncio.Semaphore(self.max_concurrency)
        return self._permits

    async def per_item_async(
        self, fn: Callable[[Any], Awaitable[Any]], items: list[Any], concurrent: bool = True
    ) -> BatchResult:
        """Await async ``fn`` once per item; ``concurrent``: items may overlap (a stateless
        function), else one after another (a ``Shard``'s ``process_item``)."""
        n = len(items)
        out: list[Any] = [None] * n
        failures: list[ItemFailure] = []
        permits = self._semaphore()
        if not concurrent:
            for pos, x in enumerate(items):
                async with permits:
                    try:
                        out[pos] = await fn(x)
                    except USER_ERRORS as exc:
                        failures.append(ItemFailure.capture(pos, exc))
            return out, failures
        # A task per item, each holding a permit: never a coroutine stepped by hand, since
        # a handler's asyncio.timeout cancels the task it started in, which must be its own.
        tasks: list[asyncio.Future[None]] = []
        for pos, x in enumerate(items):
            await permits.acquire()
            try:
                coro = fn(x)
            except USER_ERRORS as exc:  # a plain function that raised before any await
                permits.release()
                failures.append(ItemFailure.capture(pos, exc))
                continue
            tasks.append(asyncio.ensure_future(self._one(coro, pos, out, failures)))
        if tasks:
            await asyncio.gather(*tasks)
            failures.sort(key=lambda f: f.position)
        return out, failures

    async def _one(
        self, coro: Awaitable[Any], pos: int, out: list[Any], failures: list[ItemFailure]
    ) -> None:
        try:
            out[pos] = await coro
        except USER_ERRORS as exc:
            failures.append(ItemFailure.capture(pos, exc))
        finally:
            self._semaphore().release()

    async def bounded(self, awaitable: Awaitable[T]) -> T:
        """Await ``awaitable`` (an async whole-batch call) holding one permit."""
        async with self._semaphore():
            return await awaitable
