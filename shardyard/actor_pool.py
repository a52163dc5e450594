"""``ActorPool``: a drop-in for ``ray.util.ActorPool`` with futures, retries and backpressure.

It drives *your* actor handles with ``fn(actor, value)`` callables exactly as Ray's pool does
(same methods, same ordering, same errors), and adds what Ray's lacks: ``submit`` returns a
future, calls that fail because their actor died can be retried on another actor,
``submit`` can block while too many submits are queued, and every way of taking results has
an ``async`` twin.

Example:
    >>> import ray
    >>> from shardyard.actor_pool import ActorPool
    >>> @ray.remote
    ... class Doubler:
    ...     def double(self, v):
    ...         return 2 * v
    >>> pool = ActorPool([Doubler.remote(), Doubler.remote()])  # doctest: +SKIP
    >>> list(pool.map(lambda a, v: a.double.remote(v), [1, 2, 3]))  # doctest: +SKIP
    [2, 4, 6]
    >>> fut = pool.submit(lambda a, v: a.double.remote(v), 5)  # doctest: +SKIP
    >>> fut.result(), pool.get_next()  # doctest: +SKIP
    (10, 10)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError

from shardyard.scheduler.futures import ShardFuture

__all__ = ["ActorPool"]

log = logging.getLogger(__name__)

V = TypeVar("V")
Fn = Callable[[Any, Any], Any]

# What a retry (max_retries > 0) treats as "the actor is gone": the call never finished.
_ACTOR_GONE = (RayActorError, ActorDiedError, ActorUnavailableError)
_TIMEOUT_MSG = "Timed out waiting for result"
# A value whose call died with its actor this many times is not retried again (a poison
# value: its call kills whatever actor runs it).
_POISON_DEATHS = 2
_DONE = ("FINISHED", "CANCELLED", "CANCELLED_AND_NOTIFIED")


class _Retry(Exception):
    """Internal: the call failed with its actor and was resubmitted; wait again."""


class _Stopped(Exception):
    """Internal: the map whose thread submits was stopped; submit no more values."""


class _MapRun:
    """One ``map`` / ``amap`` (and their unordered twins) submitting its values.

    ``stop`` ends its submitting (checked between submits and while ``submit`` blocks):
    set when a later map starts, or when an ``amap`` is cancelled or closed, which also
    drops the run's outstanding calls (see ``ActorPool._cancel_run``).
    """

    def __init__(self) -> None:
        self.stop = threading.Event()


@dataclass(eq=False)
class _Task:
    """One submitted value from its dispatch until its result is taken."""

    index: int  # its place in submit order (what get_next returns it by)
    fn: Fn
    arg: Any
    future: _PoolFuture
    run: _MapRun | None = None  # the map that submitted it, if any
    actor: Any = None
    ref: Any = None  # what fn returned: an ObjectRef, or a list of them (num_returns > 1)
    key: Any = None  # its key in _future_to_actor (a tuple for a list of refs)
    attempt: int = 0  # bumped on every resubmit; completions of older attempts are ignored
    retries: int = 0
    deaths: int = 0  # how many times its call died with its actor
    watched: bool = False  # a Ray completion callback reports when the call ends
    # Set by Ray's callback thread (under _done_cond) when the current attempt ends:
    completed: bool = False
    out: Any = None
    exc: BaseException | None = None
    # Pool-side state (under the pool lock):
    released: bool = False  # its actor went back to the pool (or was evicted) already
    queued: bool = False  # a retry waiting in _pending_submits for an actor
    final: bool = False  # no retry any more: no actor was left to run it
    dropped: bool = False  # its map was cancelled: its result is never returned
    error: BaseException | None = None  # fn itself raised when the pool (re)dispatched it
    last_exc: BaseException | None = None  # the actor error that caused the latest retry


class _Submit(tuple[Any, ...]):
    """A queued submit: the ``(fn, value)`` pair Ray keeps, plus its future and, for a
    retry, the task it belongs to (which keeps its index)."""

    future: _PoolFuture
    task: _Task | None
    run: _MapRun | None

    def __new__(
        cls,
        fn: Fn,
        value: Any,
        future: _PoolFuture,
        task: _Task | None = None,
        run: _MapRun | None = None,
    ) -> _Submit:
        self = super().__new__(cls, (fn, value))
        self.future = future
        self.task = task
        self.run = task.run if task is not None else run
        return self


class _Waiters(list[Any]):
    """A future's waiter list that tells the pool while ``concurrent.futures.wait`` or
    ``as_completed`` waits on the future (they add and remove their waiter here)."""

    def __init__(self, pool: ActorPool) -> None:
        super().__init__()
        self._pool = pool

    def append(self, waiter: Any) -> None:
        super().append(waiter)
        self._pool._demand(1)

    def remove(self, waiter: Any) -> None:
        super().remove(waiter)
        self._pool._demand(-1)


class _PoolFuture(ShardFuture):
    """The future ``ActorPool.submit`` returns: a ``concurrent.futures.Future`` you can await.

    While anyone waits on it (``result``, ``exception``, ``concurrent.futures.wait`` /
    ``as_completed``, ``await``, ``add_done_callback``), the pool settles calls as they
    complete, so the future resolves without ``get_next``. It cannot be cancelled: the
    call runs regardless (Ray's pool has no cancel either).
    """

    def __init__(self, pool: ActorPool) -> None:
        super().__init__()
        self._pool = pool
        self._waiters = _Waiters(pool)
        self.set_running_or_notify_cancel()

    def result(self, timeout: float | None = None) -> Any:
        if self._state in _DONE:
            return super().result(timeout)
        with self._pool._waiting_on(self, timeout) as left:
            return super().result(left)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if self._state in _DONE:
            return super().exception(timeout)
        with self._pool._waiting_on(self, timeout) as left:
            return super().exception(left)

    def add_done_callback(self, fn: Callable[[concurrent.futures.Future[Any]], object]) -> None:
        if self._state not in _DONE:
            self._pool._demand(1)
            super().add_done_callback(lambda _f: self._pool._demand(-1))
        super().add_done_callback(fn)


class ActorPool:
    """A pool of your Ray actors, driven with ``fn(actor, value)`` calls.

    **Ray compatibility.** The API and behaviour of ``ray.util.ActorPool`` (Ray 2.60):
    ``submit``, ``get_next`` / ``get_next_unordered`` (``timeout``, ``ignore_if_timedout``),
    ``map`` / ``map_unordered`` (submitting eagerly through ``submit``, after draining or
    ignoring earlier submits), ``has_next``, ``has_free``, ``pop_idle``, ``push``; the same
    errors (``StopIteration("No more results to get")``, ``TimeoutError("Timed out waiting
    for result")``, ``ValueError`` for ``get_next`` after ``get_next_unordered`` or for
    pushing a member); the same bookkeeping attributes (``_idle_actors``,
    ``_future_to_actor``, ``_index_to_future``, ``_next_task_index``,
    ``_next_return_index``, ``_pending_submits``). An actor is busy until its result is
    taken; an actor whose call failed with ``ActorDiedError`` leaves the pool, other
    errors keep it. Where Ray 2.60 crashes, this pool does what Ray's later fixes do:
    ``get_next(timeout=..)`` works for ``num_returns > 1`` methods, and
    ``get_next_unordered(timeout, ignore_if_timedout=True)`` drops the oldest call and
    raises ``TimeoutError("... has been ignored.")`` like ``get_next``.

    **Additions** (their defaults keep Ray's behaviour):

    * ``submit`` returns a future (a :class:`~shardyard.ShardFuture`: a
      ``concurrent.futures.Future`` you can also ``await``) with the call's value or error.
      A submit queued while every actor is busy gets its future at once and resolves
      once it has run. Results still wait for ``get_next*`` too, as in Ray. A future
      resolves when its result is taken, or, while anyone waits on it (``result()``,
      ``exception()``, ``concurrent.futures.wait`` / ``as_completed``, ``await``,
      ``add_done_callback``), as soon as its call completes: the pool then returns
      actors as their calls complete (not when results are taken) and dispatches queued
      submits on them. Done-callbacks run in a pool thread: keep them short.
    * ``max_retries``: a call failing with ``RayActorError`` / ``ActorDiedError`` /
      ``ActorUnavailableError`` (its actor died or is unreachable) removes that actor
      from the pool and runs the same ``fn(actor, value)`` on another actor, up to
      ``max_retries`` times per value, keeping the value's place for ``get_next``. A value
      whose call died with its actor twice is not retried again (a poison value: it
      takes down two actors at most); its actor error is its result. With no actor
      left, the error is raised. ``0`` (default): Ray's behaviour, the error is raised
      to the caller.
    * Once every actor is gone (none idle, none busy), queued submits, and later ones
      until an actor is ``push``-ed, fail with the last actor error (their futures, and
      ``get_next*`` in their turn) instead of waiting forever.
    * ``max_pending_submits``: ``submit`` blocks while this many submits are queued
      (default ``None``: unbounded, as Ray). While it blocks, calls that complete return
      their actors at once and queued submits run on them, so it never waits for a
      ``get_next`` that cannot come; with no call in flight (no actor) it queues anyway.
    * ``aget_next``, ``aget_next_unordered``, ``amap``, ``amap_unordered``: ``async``
      twins that await results without blocking the event loop. ``aget_next*`` raise
      ``StopAsyncIteration`` where the synchronous ones raise ``StopIteration``.

    The pool is thread-safe (one re-entrant lock), but like Ray's it blocks while it
    waits in ``get_next*``.

    Args:
        actors: Ray actor handles the pool drives.
        max_retries: resubmits per value after its actor died (``0``: none).
        max_pending_submits: queued submits before ``submit`` blocks (``None``: no bound).

    Example:
        >>> pool = ActorPool([a1, a2], max_retries=2)  # doctest: +SKIP
        >>> futs = [pool.submit(double, v) for v in range(4)]  # doctest: +SKIP
        >>> [f.result() for f in futs]  # doctest: +SKIP
        [0, 2, 4, 6]
        >>> [pool.get_next() for _ in futs]  # results also wait for get_next  # doctest: +SKIP
        [0, 2, 4, 6]
    """

    def __init__(
        self,
        actors: Iterable[Any],
        *,
        max_retries: int = 0,
        max_pending_submits: int | None = None,
    ) -> None:
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be an int >= 0, got {max_retries!r}")
        if max_pending_submits is not None and (
            not isinstance(max_pending_submits, int) or max_pending_submits < 1
        ):
            raise ValueError(
                f"max_pending_submits must be None or an int >= 1, got {max_pending_submits!r}"
            )
        self._max_retries = max_retries
        self._max_pending = max_pending_submits

        # Ray's bookkeeping, same names and meaning.
        self._idle_actors: list[Any] = list(actors)  # actors to be used
        self._future_to_actor: dict[Any, tuple[int, Any]] = {}  # ref (or tuple) -> (i, actor)
        self._index_to_future: dict[int, Any] = {}  # i -> ref (or list of refs)
        self._next_task_index = 0  # next task to do
        self._next_return_index = 0  # next task to return
        self._pending_submits: list[_Submit] = []  # (fn, value) waiting for a free actor

        self._tasks: dict[int, _Task] = {}  # every index not returned yet
        self._busy: dict[Any, _Task] = {}  # calls holding their actor (key -> task)
        self._failed: dict[int, _Task] = {}  # fn raised on a later dispatch: raise in turn
        self._requeued = 0  # retries at the head of _pending_submits
        self._run: _MapRun | None = None  # the map submitting now, if any
        self._map_local = threading.local()  # .run: the map this thread submits for
        self._to_reap: list[_MapRun] = []  # cancelled maps whose calls are still to drop
        self._skipped: set[int] = set()  # dropped indices get_next steps over
        # The error of the last actor lost, while no actor is left (until one is pushed):
        # submits fail with it instead of waiting forever.
        self._dead_error: BaseException | None = None

        self._lock = threading.RLock()
        # Ray's callback thread reports completions under this leaf lock only (it never
        # takes the pool lock, so a pool blocked in ray.get cannot stall Ray's callbacks).
        self._done_cond = threading.Condition(threading.Lock())
        self._signal = False  # something completed or someone started waiting
        self._epoch = 0  # bumped when an actor comes back or a queued retry leaves
        self._demanders = 0  # waiters on this pool's futures
        self._pump: threading.Thread | None = None

    # --- Ray's API ----------------------------------------------------------------------------

    def map(self, fn: Callable[[Any, V], Any], values: Iterable[V]) -> Iterator[Any]:
        """Apply ``fn`` over ``values`` on the actors; an iterator of results in order.

        Like Ray's: earlier submits whose results were not taken are first taken if
        ready, else ignored (``get_next(timeout=0, ignore_if_timedout=True)``), then every
        value is submitted at once through ``submit`` (so ``max_pending_submits`` applies),
        and the iterator must be consumed for the work to finish.

        Args:
            fn: ``fn(actor, value)`` returning an ``ObjectRef`` (or a list of them); the
                actor is busy until its result is taken.
            values: values to apply ``fn`` to.

        Returns:
            Iterator over the results, in the order of ``values``.
        """
        self._start_map(fn, values, ordered=True)
        return self._results(ordered=True)

    def map_unordered(self, fn: Callable[[Any, V], Any], values: Iterable[V]) -> Iterator[Any]:
        """Like :meth:`map`, but results come in completion order.

        Like Ray's, it first waits for (and discards) the results of earlier submits.
        """
        self._start_map(fn, values, ordered=False)
        return self._results(ordered=False)

    def submit(self, fn: Callable[[Any, V], Any], value: V) -> ShardFuture:
        """Schedule ``fn(actor, value)`` on an idle actor, or queue it until one is free.

        The result is taken with ``get_next`` / ``get_next_unordered``, as in Ray, and
        also resolves the returned future.

        With ``max_pending_submits`` set, blocks while that many submits are queued;
        meanwhile actors whose calls complete are returned at once and run queued submits.
        If ``fn`` raises, the error is raised here (and the actor stays in the pool).

        Args:
            fn: ``fn(actor, value)`` returning an ``ObjectRef`` (or a list of them).
            value: the value to compute a result for.

        Returns:
            A future with the call's value (a list for ``num_returns > 1``) or error.
        """
        # A map submits through here (as Ray's); its run ends its submits once stopped.
        run: _MapRun | None = getattr(self._map_local, "run", None)
        future = _PoolFuture(self)
        entry = _Submit(fn, value, future, run=run)
        while True:
            with self._lock:
                self._reap()
                if run is not None and run.stop.is_set():
                    raise _Stopped
                if self._idle_actors:
                    self._dispatch(entry, raise_errors=True)
                    return future
                if self._dead_error is not None:
                    # Every actor died: nothing would ever run it (until one is pushed).
                    self._fail_entry(entry, self._dead_error)
                    return future
                if not self._queue_full():
                    self._pending_submits.append(entry)
                    return future
                # Backpressure: take back the actors whose calls completed, which runs
                # queued submits on them, and wait for one if none has.
                self._advance()
                if self._idle_actors or not self._queue_full():
                    continue
                watched, epoch = self._watched_busy(), self._epoch
            self._wait_any_completed(watched, None, epoch, run)

    def has_next(self) -> bool:
        """Whether any submitted result has not been returned yet."""
        if self._to_reap:
            with self._lock:
                self._reap()
        return (
            bool(self._future_to_actor)
            or bool(self._failed)
            or self._requeued > 0
            # Queued submits whose actors are all busy with dropped calls (a cancelled
            # map's, still running): they run once those end.
            or (bool(self._pending_submits) and bool(self._busy))
        )

    def get_next(self, timeout: float | None = None, ignore_if_timedout: bool = False) -> Any:
        """The next result, in submit order.

        Args:
            timeout: seconds to wait for it; ``None`` waits indefinitely.
            ignore_if_timedout: on timeout, drop that call (its actor goes back to the
                pool, its future fails with the ``TimeoutError``) and raise
                ``TimeoutError`` after advancing past it.

        Returns:
            The result (a list for ``num_returns > 1``).

        Raises:
            StopIteration: nothing was submitted that is not returned yet.
            ValueError: called after ``get_next_unordered`` took results out of order.
            TimeoutError: the timeout passed first.
        """
        with self._lock:
            self._reap()
            if not self.has_next():
                raise StopIteration("No more results to get")
            deadline = _deadline(timeout)
            self._run_queued_behind_dropped(deadline, ignore_if_timedout)
            if self._next_return_index >= self._next_task_index:
                raise ValueError("It is not allowed to call get_next() after get_next_unordered().")
            while True:
                task = self._tasks[self._next_return_index]
                if task.error is None:
                    if task.queued:
                        if not self._wait_queued(task, deadline):
                            self._timed_out(task, ignore_if_timedout, ordered=True)
                        continue
                    if timeout is not None:
                        refs = _refs(task.ref)
                        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=_left(deadline))
                        if len(ready) < len(refs):
                            self._timed_out(task, ignore_if_timedout, ordered=True)
                try:
                    return self._take(task, ordered=True)
                except _Retry:
                    continue

    def get_next_unordered(
        self, timeout: float | None = None, ignore_if_timedout: bool = False
    ) -> Any:
        """Any next result, in completion order.

        Args:
            timeout: seconds to wait for one; ``None`` waits indefinitely.
            ignore_if_timedout: on timeout, drop the oldest call in flight (as ``get_next``
                drops the one it waited for) and raise ``TimeoutError`` after it.

        Returns:
            The result (a list for ``num_returns > 1``).

        Raises:
            StopIteration: nothing was submitted that is not returned yet.
            TimeoutError: the timeout passed first.
        """
        with self._lock:
            self._reap()
            if not self.has_next():
                raise StopIteration("No more results to get")
            deadline = _deadline(timeout)
            self._run_queued_behind_dropped(deadline, ignore_if_timedout)
            while True:
                if self._failed:
                    return self._take(self._failed[min(self._failed)], ordered=False)
                handles = {_first(key): key for key in self._future_to_actor}
                if not handles:
                    if not self._requeued:
                        raise StopIteration("No more results to get")
                    # Only retries waiting for an actor remain (at the head of the queue).
                    task = self._pending_submits[0].task
                    assert task is not None
                    if not self._wait_queued(task, deadline):
                        self._timed_out(task, ignore_if_timedout, ordered=False)
                    continue
                ready, _ = ray.wait(list(handles), num_returns=1, timeout=_left(deadline))
                if not ready:
                    oldest = self._future_to_actor[next(iter(self._future_to_actor))][0]
                    self._timed_out(self._tasks[oldest], ignore_if_timedout, ordered=False)
                index = self._future_to_actor[handles[ready[0]]][0]
                try:
                    return self._take(self._tasks[index], ordered=False)
                except _Retry:
                    continue

    def has_free(self) -> bool:
        """Whether an actor is idle and no submit is queued."""
        with self._lock:
            return len(self._idle_actors) > 0 and len(self._pending_submits) == 0

    def pop_idle(self) -> Any | None:
        """Remove an idle actor from the pool and return it; ``None`` if none is free."""
        with self._lock:
            if self.has_free():
                return self._idle_actors.pop()
            return None

    def push(self, actor: Any) -> None:
        """Add ``actor`` to the pool (it runs a queued submit at once, if any).

        Raises:
            ValueError: the actor already belongs to the pool (idle or busy).
        """
        with self._lock:
            busy_actors = [a for _, a in self._future_to_actor.values()]
            busy_actors += [t.actor for t in self._busy.values()]
            if actor in self._idle_actors or actor in busy_actors:
                raise ValueError("Actor already belongs to current ActorPool")
            self._return_actor(actor)

    # --- async twins -------------------------------------------------------------------------

    async def aget_next(
        self, timeout: float | None = None, ignore_if_timedout: bool = False
    ) -> Any:
        """``get_next`` for asyncio: awaits the result without blocking the event loop.

        Raises:
            StopAsyncIteration: nothing left to return (``get_next`` raises StopIteration,
                which a coroutine may not raise).
        """
        deadline = _deadline(timeout)
        while True:
            try:
                return self.get_next(timeout=0)
            except TimeoutError:
                pass
            except StopIteration as stop:
                raise StopAsyncIteration(*stop.args) from None
            with self._lock:
                task = self._tasks.get(self._next_return_index)
                if task is not None and not task.queued and task.error is None:
                    refs, every = _refs(task.ref), True
                else:  # a retry waiting for an actor: wait for any call to end
                    refs, every = [_first(t.key) for t in self._watched_busy()], False
            if not await _await_refs(refs, _left(deadline), every):
                try:
                    return self.get_next(timeout=0, ignore_if_timedout=ignore_if_timedout)
                except StopIteration as stop:
                    raise StopAsyncIteration(*stop.args) from None

    async def aget_next_unordered(
        self, timeout: float | None = None, ignore_if_timedout: bool = False
    ) -> Any:
        """``get_next_unordered`` for asyncio, without blocking the event loop.

        Raises:
            StopAsyncIteration: nothing left to return.
        """
        deadline = _deadline(timeout)
        while True:
            try:
                return self.get_next_unordered(timeout=0)
            except TimeoutError:
                pass
            except StopIteration as stop:
                raise StopAsyncIteration(*stop.args) from None
            with self._lock:
                refs = [_first(key) for key in self._future_to_actor]
                if not refs:  # only retries waiting for an actor: wait for any call to end
                    refs = [_first(t.key) for t in self._watched_busy()]
            if not await _await_refs(refs, _left(deadline), every=False):
                try:
                    return self.get_next_unordered(timeout=0, ignore_if_timedout=ignore_if_timedout)
                except StopIteration as stop:
                    raise StopAsyncIteration(*stop.args) from None

    def amap(self, fn: Callable[[Any, V], Any], values: Iterable[V]) -> AsyncIterator[Any]:
        """``map`` for asyncio: an async iterator of results in order.

        The eager part (earlier results, then every submit, which may block under
        ``max_pending_submits``) runs in a worker thread. Cancelling (or closing) the
        iterator stops that thread's submits and drops the map's outstanding calls: their
        results are never returned by a later ``get_next*`` or map (their futures fail
        with ``concurrent.futures.CancelledError``).

        Each result gives the event loop a turn, even when it was already in hand, so a
        long map never starves the loop's other tasks.
        """
        return self._amap(fn, values, ordered=True)

    def amap_unordered(
        self, fn: Callable[[Any, V], Any], values: Iterable[V]
    ) -> AsyncIterator[Any]:
        """``map_unordered`` for asyncio: an async iterator of results as they complete.

        Cancelling (or closing) it drops the map's outstanding calls, as for :meth:`amap`.
        """
        return self._amap(fn, values, ordered=False)

    async def _amap(self, fn: Fn, values: Iterable[Any], ordered: bool) -> AsyncIterator[Any]:
        run = _MapRun()
        take = self.aget_next if ordered else self.aget_next_unordered
        try:
            await asyncio.to_thread(self._start_map, fn, values, ordered, run)
            while self.has_next():
                yield await take()
                # A result already in hand is taken without suspending: give the loop a
                # turn per item, so other tasks run and a cancel lands mid-stream.
                await asyncio.sleep(0)
        except BaseException as exc:
            if not isinstance(exc, Exception):  # cancelled, closed or interrupted
                self._cancel_run(run)
            raise

    # --- map ---------------------------------------------------------------------------------

    def _start_map(
        self, fn: Fn, values: Iterable[Any], ordered: bool, run: _MapRun | None = None
    ) -> None:
        run = run or _MapRun()
        with self._lock:
            if run.stop.is_set():  # cancelled before it started
                return
            # A map still submitting (in another thread, or an abandoned amap's) stops:
            # its later values would mix with this map's.
            if self._run is not None:
                self._stop_run(self._run)
            self._run = run
            # Earlier submits first, as Ray: map ignores what is not ready; map_unordered
            # waits for each (Ray polls with timeout=0; blocking is the same without the
            # spinning).
            while self.has_next() and not run.stop.is_set():
                if ordered:
                    with contextlib.suppress(TimeoutError):
                        self.get_next(timeout=0, ignore_if_timedout=True)
                else:
                    self.get_next_unordered()
        self._map_local.run = run
        try:
            for v in values:
                self.submit(fn, v)
        except _Stopped:
            pass
        finally:
            self._map_local.run = None
            with self._lock:
                if self._run is run:
                    self._run = None
                self._reap()

    def _stop_run(self, run: _MapRun) -> None:
        """End ``run``'s submits (its thread may be blocked by backpressure: wake it)."""
        run.stop.set()
        self._changed()

    def _cancel_run(self, run: _MapRun) -> None:
        """An amap was cancelled: stop its submits and drop its outstanding calls.

        Runs on the event loop: the calls are dropped now if the pool lock is free, else
        by whoever takes the lock next (before it returns any result).
        """
        self._to_reap.append(run)
        self._stop_run(run)
        if self._lock.acquire(blocking=False):
            try:
                self._reap()
            finally:
                self._lock.release()

    def _reap(self) -> None:
        """Drop the outstanding calls of cancelled maps (under the pool lock)."""
        while self._to_reap:
            run = self._to_reap.pop()
            err = concurrent.futures.CancelledError("the map was cancelled: result dropped")
            keep = []
            for entry in self._pending_submits:
                if entry.run is run and entry.task is None:
                    _resolve(entry.future, None, err)
                else:
                    keep.append(entry)
            self._pending_submits[:] = keep
            for task in sorted(
                (t for t in self._tasks.values() if t.run is run), key=lambda t: t.index
            ):
                self._drop(task, err)
            self._advance()
            self._promote()
            self._changed()

    def _drop(self, task: _Task, err: BaseException) -> None:
        """Forget ``task`` (never returned); a call still running keeps its actor until it
        ends (settled by ``_advance``), unless nothing reports its end (Ray's ignore)."""
        task.dropped = True
        if task.queued:
            self._unqueue(task)
        self._tasks.pop(task.index, None)
        self._failed.pop(task.index, None)
        self._index_to_future.pop(task.index, None)
        if task.key is not None:
            self._future_to_actor.pop(task.key, None)
        self._skipped.add(task.index)
        self._skip_returned()
        _resolve(task.future, None, err)
        if not task.released and not task.watched:
            self._unbusy(task)
            self._return_actor(task.actor)

    def _skip_returned(self) -> None:
        """Step ``get_next``'s index over dropped calls."""
        while self._next_return_index in self._skipped:
            self._skipped.discard(self._next_return_index)
            self._next_return_index += 1

    def _results(self, ordered: bool) -> Iterator[Any]:
        while self.has_next():
            yield self.get_next() if ordered else self.get_next_unordered()

    # --- dispatch and taking results (under the pool lock) -----------------------------------

    def _queue_full(self) -> bool:
        return (
            self._max_pending is not None
            and len(self._pending_submits) >= self._max_pending
            and bool(self._watched_busy())  # with nothing in flight, blocking cannot end
        )

    def _watched_busy(self) -> list[_Task]:
        return [t for t in self._busy.values() if t.watched]

    def _new_task(self, entry: _Submit) -> _Task:
        task = _Task(self._next_task_index, entry[0], entry[1], entry.future, entry.run)
        self._tasks[task.index] = task
        self._next_task_index += 1
        return task

    def _dispatch(self, entry: _Submit, raise_errors: bool) -> None:
        """Run ``entry`` on an idle actor (Ray's choice: the last one)."""
        actor = self._idle_actors.pop()
        task = entry.task
        if task is not None and task.queued:
            task.queued = False
            self._requeued -= 1
        try:
            ref = entry[0](actor, entry[1])
        except Exception as exc:
            self._idle_actors.append(actor)
            _resolve(entry.future, None, exc)
            if raise_errors and task is None:
                raise
            # A submit dispatched later (from the queue, or a retry): its error is its
            # result, raised by get_next* in its turn (nobody is there to raise it to now).
            if task is None:
                task = self._new_task(entry)
            task.error = exc
            self._failed[task.index] = task
            return
        if task is None:
            task = self._new_task(entry)
        task.actor, task.ref, task.released = actor, ref, False
        task.key = tuple(ref) if isinstance(ref, list) else ref
        self._future_to_actor[task.key] = (task.index, actor)
        self._index_to_future[task.index] = ref
        self._busy[task.key] = task
        self._watch(task)

    def _promote(self) -> None:
        while self._pending_submits and self._idle_actors:
            self._dispatch(self._pending_submits.pop(0), raise_errors=False)

    def _return_actor(
        self, actor: Any, is_alive: bool = True, exc: BaseException | None = None
    ) -> None:
        # A dead actor stays out of the idle set (as in Ray), else submits keep picking it.
        if is_alive:
            self._idle_actors.append(actor)
            self._dead_error = None
        elif not self._idle_actors and not self._busy and exc is not None:
            self._pool_dead(exc)
        self._promote()
        self._changed()

    def _pool_dead(self, exc: BaseException) -> None:
        """The last actor was lost (``exc``): fail every queued submit, which no actor
        is left to run, and later submits until an actor is pushed."""
        self._dead_error = exc
        entries, self._pending_submits = self._pending_submits, []
        self._requeued = 0
        for entry in entries:
            self._fail_entry(entry, exc)

    def _fail_entry(self, entry: _Submit, exc: BaseException) -> None:
        """Fail a submit that will not run: its future now, ``get_next*`` in its turn."""
        task = entry.task
        if task is None:
            task = self._new_task(entry)
        else:
            task.queued = False
            exc = task.last_exc or exc
        task.final = True
        task.error = exc
        self._failed[task.index] = task
        _resolve(entry.future, None, exc)

    def _changed(self) -> None:
        """Wake a ``submit`` blocked by backpressure: the pool changed under it."""
        with self._done_cond:
            self._epoch += 1
            self._done_cond.notify_all()

    def _unbusy(self, task: _Task) -> None:
        self._busy.pop(task.key, None)
        task.released = True

    def _commit(self, task: _Task, ordered: bool) -> None:
        """Ray's bookkeeping for a returned (or ignored) result."""
        i = task.index
        self._tasks.pop(i, None)
        self._failed.pop(i, None)
        self._index_to_future.pop(i, None)
        if task.key is not None:
            self._future_to_actor.pop(task.key, None)
        if ordered:
            self._next_return_index += 1
        else:
            self._next_return_index = max(self._next_return_index, i + 1)
        if self._skipped:
            self._skip_returned()
            self._skipped = {j for j in self._skipped if j > self._next_return_index}

    def _take(self, task: _Task, ordered: bool) -> Any:
        """Return ``task``'s result (``ray.get``, as Ray), or raise its error."""
        if task.error is not None:
            self._commit(task, ordered)
            raise task.error
        try:
            value = ray.get(task.ref)
        except Exception as exc:
            if not task.released and self._call_failed(task, exc):
                raise _Retry from None
            self._commit(task, ordered)
            _resolve(task.future, None, exc)
            raise
        self._commit(task, ordered)
        _resolve(task.future, value, None)
        if not task.released:
            self._unbusy(task)
            self._return_actor(task.actor)
        return value

    def _timed_out(self, task: _Task, ignore: bool, ordered: bool) -> None:
        """Raise Ray's TimeoutError; with ``ignore``, drop ``task`` first."""
        if not ignore:
            raise TimeoutError(_TIMEOUT_MSG)
        self._commit(task, ordered)
        err = TimeoutError(f"{_TIMEOUT_MSG}. The task {task.ref} has been ignored.")
        if task.queued:
            self._unqueue(task)
        elif not task.released:
            # As Ray: the actor goes back although its call may still run.
            self._unbusy(task)
            self._return_actor(task.actor)
        _resolve(task.future, None, err)
        raise err

    # --- retries ---------------------------------------------------------------------------

    def _evicts(self, exc: BaseException) -> bool:
        """Whether a call that failed with ``exc`` takes its actor out of the pool."""
        if self._max_retries == 0:
            return isinstance(exc, ActorDiedError)  # Ray 2.60's rule
        return isinstance(exc, _ACTOR_GONE) and not isinstance(exc, RayTaskError)

    def _call_failed(self, task: _Task, exc: BaseException) -> bool:
        """``task``'s call (holding its actor) failed with ``exc``: release the actor and
        resubmit the value if it may be retried. True if it was resubmitted."""
        self._unbusy(task)
        if task.dropped:
            self._return_actor(task.actor, not self._evicts(exc), exc)
            return False
        if _died(exc):
            task.deaths += 1
        if self._should_retry(task, exc):
            if task.deaths >= _POISON_DEATHS:
                # A poison value: each call on it killed its actor. Retrying would take
                # down one more actor per retry; the actor error is its result.
                log.warning(
                    "shardyard.ActorPool: the value at index %d killed its actor %d times "
                    "(last: %s: %s); not retrying it again (a poison value)",
                    task.index,
                    task.deaths,
                    type(exc).__name__,
                    str(exc).split("\n", 1)[0],
                )
            elif self._retry(task, exc):
                self._return_actor(task.actor, False, exc)  # it is gone: never returned
                return True
            task.final = True
            self._return_actor(task.actor, False, exc)
            return False
        self._return_actor(task.actor, not self._evicts(exc), exc)
        return False

    def _should_retry(self, task: _Task, exc: BaseException) -> bool:
        return (
            task.retries < self._max_retries
            and not task.final
            and isinstance(exc, _ACTOR_GONE)
            and not isinstance(exc, RayTaskError)
        )

    def _retry(self, task: _Task, exc: BaseException) -> bool:
        """Resubmit ``task`` (its actor is gone: not returned); False if no actor is left."""
        if not self._idle_actors and not self._busy:
            return False
        log.warning(
            "shardyard.ActorPool: a call failed with its actor (%s: %s); retrying it on "
            "another actor (retry %d of %d)",
            type(exc).__name__,
            str(exc).split("\n", 1)[0],
            task.retries + 1,
            self._max_retries,
        )
        self._future_to_actor.pop(task.key, None)
        self._index_to_future.pop(task.index, None)
        task.key = None
        with self._done_cond:
            task.attempt += 1
            task.completed, task.out, task.exc = False, None, None
        task.retries += 1
        task.last_exc = exc
        entry = _Submit(task.fn, task.arg, task.future, task)
        if self._idle_actors:
            self._dispatch(entry, raise_errors=False)
        else:
            # Ahead of fresh submits (after earlier retries): it holds an early index.
            task.queued = True
            self._pending_submits.insert(self._requeued, entry)
            self._requeued += 1
        return True

    def _unqueue(self, task: _Task) -> None:
        for k, entry in enumerate(self._pending_submits):
            if entry.task is task:
                del self._pending_submits[k]
                break
        task.queued = False
        self._requeued -= 1
        self._changed()

    def _run_queued_behind_dropped(self, deadline: float | None, ignore: bool) -> None:
        """Wait until queued submits run when only dropped calls hold the actors.

        A cancelled map's calls still running keep their actors (``_drop``) but no
        longer count as results: submits queued behind them have no call to wait on
        yet. Settle completed calls until one of them is dispatched. On timeout, Ray's
        TimeoutError; with ``ignore``, the first queued submit is dropped first, as Ray
        drops the call it waited for (so a ``map``, which ignores what is not ready,
        moves on).
        """
        while (
            not self._future_to_actor
            and not self._failed
            and not self._requeued
            and self._pending_submits
        ):
            self._advance()
            self._promote()
            watched = self._watched_busy()
            if self._future_to_actor or not watched:
                return
            if not self._wait_any_completed(watched, deadline):
                if not ignore:
                    raise TimeoutError(_TIMEOUT_MSG)
                entry = self._pending_submits.pop(0)
                err = TimeoutError(f"{_TIMEOUT_MSG}. A queued submit has been ignored.")
                _resolve(entry.future, None, err)
                raise err

    def _wait_queued(self, task: _Task, deadline: float | None) -> bool:
        """Settle completed calls until the queued retry ``task`` runs; False on timeout."""
        while task.queued:
            self._promote()
            if not task.queued:
                break
            watched = self._watched_busy()
            if not watched:
                # Nothing in flight can free an actor for it: no actor is left.
                self._unqueue(task)
                task.final = True
                task.error = task.last_exc or RuntimeError("no actor left in the ActorPool")
                self._failed[task.index] = task
                _resolve(task.future, None, task.error)
                break
            if not self._wait_any_completed(watched, deadline):
                return False
            self._advance()
        return True

    # --- completions (settling calls before their results are taken) --------------------------

    def _watch(self, task: _Task) -> None:
        """Have Ray report when ``task``'s current attempt ends (see :meth:`_completed`)."""
        refs = _refs(task.ref)
        if not refs or not all(isinstance(r, ray.ObjectRef) for r in refs):
            task.watched = False  # e.g. a generator: settled only when taken
            return
        task.watched = True
        attempt, many = task.attempt, isinstance(task.ref, list)
        cfs = [r.future() for r in refs]
        left = [len(cfs)]
        count_lock = threading.Lock()

        def on_done(_: concurrent.futures.Future[Any]) -> None:
            with count_lock:
                left[0] -= 1
                if left[0]:
                    return
            out: Any = None
            exc: BaseException | None = None
            try:
                exc = next((e for e in (cf.exception() for cf in cfs) if e is not None), None)
                if exc is None:
                    out = [cf.result() for cf in cfs] if many else cfs[0].result()
            except BaseException as err:  # a cancelled Ray future: count it as a failure
                exc = err
            self._completed(task, attempt, out, exc)

        for cf in cfs:
            cf.add_done_callback(on_done)

    def _completed(self, task: _Task, attempt: int, out: Any, exc: BaseException | None) -> None:
        """On Ray's callback thread: record the outcome; never touches the pool lock."""
        with self._done_cond:
            if task.attempt != attempt or task.completed:
                return
            task.out, task.exc, task.completed = out, exc, True
            self._signal = True
            self._done_cond.notify_all()

    def _wait_any_completed(
        self,
        tasks: list[_Task],
        deadline: float | None,
        epoch: int | None = None,
        run: _MapRun | None = None,
    ) -> bool:
        """Wait until one of ``tasks`` completed (or, given ``epoch``, the pool changed, or
        ``run`` was stopped)."""

        def ready() -> bool:
            changed = epoch is not None and self._epoch != epoch
            stopped = run is not None and run.stop.is_set()
            return changed or stopped or any(t.completed for t in tasks)

        with self._done_cond:
            return self._done_cond.wait_for(ready, _left(deadline))

    def _advance(self) -> None:
        """Settle every call that completed: its actor goes back (or out), queues move."""
        for task in [t for t in self._busy.values() if t.completed]:
            if task.completed and self._busy.get(task.key) is task:
                self._settle(task)

    def _settle(self, task: _Task) -> None:
        exc = task.exc
        if exc is None:
            self._unbusy(task)
            out, task.out = task.out, None  # get_next* fetches its own copy
            _resolve(task.future, out, None)
            self._return_actor(task.actor)
        elif not self._call_failed(task, exc):
            _resolve(task.future, None, exc)

    # --- waiting on futures: the pump ----------------------------------------------------------

    def _demand(self, delta: int) -> None:
        """Someone started (+1) or stopped (-1) waiting on one of this pool's futures."""
        with self._done_cond:
            self._demanders += delta
            if delta > 0:
                self._signal = True
                if self._pump is None:
                    self._pump = threading.Thread(
                        target=self._pump_main, name="shardyard-actorpool", daemon=True
                    )
                    self._pump.start()
            self._done_cond.notify_all()

    def _pump_main(self) -> None:
        """While anyone waits on a future: settle calls as they complete."""
        while True:
            with self._done_cond:
                while not self._signal and self._demanders > 0:
                    self._done_cond.wait()
                if not self._signal:
                    self._pump = None
                    return
                self._signal = False
            with self._lock:
                try:
                    self._advance()
                except Exception:
                    log.exception("shardyard.ActorPool: settling completed calls failed")

    @contextlib.contextmanager
    def _waiting_on(self, fut: _PoolFuture, timeout: float | None) -> Iterator[float | None]:
        """Make ``fut`` progress while its caller waits; yields the time left to wait."""
        owned: bool = self._lock._is_owned()  # type: ignore[attr-defined]
        if not owned and threading.current_thread() is not self._pump:
            self._demand(1)  # the pump settles calls while the caller waits
            try:
                yield timeout
            finally:
                self._demand(-1)
            return
        # Called from inside the pool (a done-callback, or fn): the pump could not take
        # the lock, so settle completions in this thread.
        deadline = _deadline(timeout)
        with self._lock:
            while fut._state not in _DONE:
                self._advance()
                watched = self._watched_busy()
                if fut._state in _DONE or not watched:
                    break
                if not self._wait_any_completed(watched, deadline):
                    break
        yield _left(deadline)


# --- helpers ----------------------------------------------------------------------------------


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _died(exc: BaseException) -> bool:
    """Whether a call failed because its actor died (not merely unreachable)."""
    return isinstance(exc, RayActorError) and not isinstance(
        exc, (ActorUnavailableError, RayTaskError)
    )


def _refs(ref: Any) -> list[Any]:
    return list(ref) if isinstance(ref, list) else [ref]


def _first(key: Any) -> Any:
    """The ref to wait on for a key of ``_future_to_actor`` (a call's returns end together)."""
    return key[0] if isinstance(key, tuple) else key


def _resolve(fut: concurrent.futures.Future[Any], value: Any, exc: BaseException | None) -> None:
    if fut.done():
        return
    with contextlib.suppress(concurrent.futures.InvalidStateError):
        if exc is None:
            fut.set_result(value)
        else:
            fut.set_exception(exc)


async def _await_refs(refs: list[Any], timeout: float | None, every: bool) -> bool:
    """Await all (``every``) or any of ``refs`` without blocking the loop; False on timeout."""
    if not refs:
        return True
    waits = [asyncio.wrap_future(r.future()) for r in refs]
    for w in waits:
        w.add_done_callback(_observe)
    when = asyncio.ALL_COMPLETED if every else asyncio.FIRST_COMPLETED
    done, _ = await asyncio.wait(waits, timeout=timeout, return_when=when)
    return bool(done) and (len(done) == len(waits) or not every)


def _observe(fut: asyncio.Future[Any]) -> None:
    # The outcome reaches the caller through get_next*: mark it seen so asyncio stays quiet.
    if not fut.cancelled():
        fut.exception()
