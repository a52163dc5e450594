"""``Executor``: a ``concurrent.futures.Executor`` whose calls run on shard actors.

A drop-in for ``ProcessPoolExecutor`` on Ray: ``submit``, ``map`` (with ``timeout`` and
``chunksize``), ``shutdown(wait, cancel_futures)``, real ``concurrent.futures.Future``
objects (``wait``, ``as_completed``, ``loop.run_in_executor``, ``asyncio.wrap_future``),
and exceptions that keep their type. Functions travel with cloudpickle, so lambdas and
closures work (``ProcessPoolExecutor`` cannot pickle them), and ``address=`` runs the calls
on a Ray cluster.

Example:
    >>> from shardyard.executor import Executor
    >>> with Executor(max_workers=2) as ex:                       # doctest: +SKIP
    ...     print(ex.submit(pow, 2, 10).result())
    ...     print(list(ex.map(lambda x: x * x, range(6), chunksize=2)))
    1024
    [0, 1, 4, 9, 16, 25]
"""

from __future__ import annotations

import concurrent.futures
import itertools
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, PENDING, RUNNING
from functools import partial
from typing import Any, ParamSpec, TypeVar

from shardyard.config import PoolConfig
from shardyard.errors import PoolClosedError, TaskError
from shardyard.scheduler.futures import ShardFuture
from shardyard.scheduler.pool import ShardPool

__all__ = ["Executor"]

T = TypeVar("T")
P = ParamSpec("P")

# The window of calls handed to the pool (the rest wait in the executor, cancellable) adapts
# to how long a handed call takes to finish, as TCP's congestion window does. By Little's law
# the calls in flight when a call was handed, over its latency, is the rate the pool went
# at; times WINDOW_TARGET_S, the window that keeps a handed call waiting about that long.
# While calls finish within the target and calls are waiting, the window grows towards that
# (at least by one call, at most doubling, per call finished); when they take longer, it
# shrinks to it; after a pause it restarts smaller (RFC 2861). Calls of a second or more thus
# keep one call per worker in the pool, as ProcessPoolExecutor does, while tiny calls fill a
# window of hundreds, which the pool batches into few Ray calls.
WINDOW_TARGET_S = 0.02  # how long a handed call should wait in the pool, about
WINDOW_MAX_PER_WORKER = 1024  # the window's bound, per worker
WINDOW_HALF_LIFE_S = 0.25  # an idle executor's window halves every this many seconds

_Call = tuple["_Future[Any]", Callable[..., Any], tuple[Any, ...], dict[str, Any]]


def _run_call(call: tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]) -> Any:
    """The pool's handler, in the actor: one ``fn(*args, **kwargs)``."""
    fn, args, kwargs = call
    return fn(*args, **kwargs)


def _process_chunk(fn: Callable[..., Any], chunk: list[tuple[Any, ...]]) -> list[Any]:
    """One call of ``map(chunksize>1)``: ``fn`` over a chunk of argument tuples."""
    return [fn(*args) for args in chunk]


def _chunks(iterables: tuple[Iterable[Any], ...], size: int) -> Iterator[list[tuple[Any, ...]]]:
    it = zip(*iterables, strict=False)  # the shortest iterable ends map, as zip does
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def _flatten(results: Iterator[list[T]]) -> Iterator[T]:
    for chunk in results:
        yield from chunk


def _original(exc: BaseException) -> BaseException:
    """The exception the caller's ``fn`` raised, from the pool's ``TaskError`` around it.

    The ``TaskError`` (shard, remote traceback) becomes the original's ``__cause__``, as
    ``ProcessPoolExecutor`` chains its ``_RemoteTraceback``; when the original already has a
    cause, the remote traceback is added as a note instead. Errors of the pool itself
    (``PoolClosedError``, ``ActorLostError``, ``PoisonItemError``) and a ``TaskError`` whose
    original could not travel are returned as they are.
    """
    if type(exc) is not TaskError or exc.cause is None:
        return exc
    cause = exc.cause
    exc.__cause__ = None  # TaskError chains to its cause: break the loop
    exc.__suppress_context__ = True
    if cause.__cause__ is None:
        cause.__cause__ = exc
    elif sys.version_info >= (3, 11):
        cause.add_note(
            f"raised on shard {exc.shard_id} (a shardyard actor process); traceback there:\n"
            f"{exc.remote_traceback}"
        )
    return cause


class _Future(ShardFuture, concurrent.futures.Future[T]):
    """The future of one call: a ``concurrent.futures.Future`` (awaitable too).

    The futures of one executor share one ``Condition``, as a pool's ``ShardFuture``s do
    (creating one per future costs more than the rest of a submit). Its ``cancel`` also
    wakes ``wait``/``as_completed`` at once: the stdlib tells waiters of a cancel only when
    the executor later reaches the call (``set_running_or_notify_cancel``), so ``wait`` on
    a cancelled call of a busy executor blocks until then.
    """

    def cancel(self) -> bool:
        if not super().cancel():
            return False
        with self._condition:
            if self._state == CANCELLED:
                self._state = CANCELLED_AND_NOTIFIED
                for waiter in self._waiters:
                    waiter.add_cancelled(self)
        return True

    def claim(self) -> bool:
        """Mark the call running unless it was cancelled (then it must not run)."""
        with self._condition:
            if self._state != PENDING:
                return False
            self._state = RUNNING
            return True


class Executor(concurrent.futures.Executor):
    """A ``concurrent.futures.Executor`` running each call on a :class:`ShardPool`'s actors.

    Each worker is a shard actor (a process) that runs one call at a time, so at most
    ``max_workers`` calls run at once. Submitted calls wait in the executor until they are
    handed to the pool, a bounded window of them at a time; a future turns running when its
    call is handed over (as ``ProcessPoolExecutor``'s do when it moves a call to its
    workers): until then ``cancel()`` succeeds and the call never runs, after it
    ``cancel()`` returns False. The window adapts to the calls' duration: one per worker for
    calls of a second or more, hundreds for calls of microseconds (the pool batches them
    into few Ray calls); it starts at one per worker.

    A call that raises fails its future with the same exception (its type, message and
    attributes, also for exception classes defined in ``__main__``); the pool's
    :class:`~shardyard.TaskError`, naming the shard and holding the actor's traceback, is
    its ``__cause__``. Errors of the pool itself (an actor lost beyond its retries, a call
    that kills its process every time) fail the future with shardyard's error.

    Args:
        max_workers: actors, hence calls running at once (``None``: the cluster's CPUs).
        config: a :class:`~shardyard.PoolConfig` for the pool.
        address: Ray address for :func:`shardyard.connect` (default: embedded local Ray).
        **pool_options: further ``PoolConfig`` fields (``max_retries=...``,
            ``num_cpus_per_actor=...``). ``max_inflight_per_actor`` defaults to 1 here: an
            idle actor is never passed over for a busy one (more tiny-call throughput
            comes from the window, which the pool batches).

    Raises:
        ValueError: ``max_workers`` is not positive.
        TypeError: ``num_actors`` or ``batched`` was given (use ``max_workers``).
        pydantic.ValidationError: a pool option is unknown or invalid.

    Example:
        >>> import concurrent.futures as cf
        >>> with Executor(max_workers=2) as ex:                   # doctest: +SKIP
        ...     fs = [ex.submit(lambda x: x + 1, i) for i in range(4)]
        ...     sorted(f.result() for f in cf.as_completed(fs, timeout=60))
        [1, 2, 3, 4]
    """

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        config: PoolConfig | None = None,
        address: str | None = None,
        **pool_options: Any,
    ) -> None:
        if max_workers is not None and max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        for name in ("num_actors", "batched"):
            if name in pool_options:
                raise TypeError(f"Executor() takes no {name}= (use max_workers)")
        if config is None or "max_inflight_per_actor" not in config.model_fields_set:
            pool_options.setdefault("max_inflight_per_actor", 1)
        self._pool = ShardPool(
            _run_call, num_actors=max_workers, config=config, address=address, **pool_options
        )
        self._lock = threading.Lock()  # guards the fields below
        self._idle = threading.Condition(self._lock)  # notified when nothing is outstanding
        self._condition = threading.Condition()  # shared by the futures (see _Future)
        self._start_lock = threading.Lock()
        self._queue: deque[_Call] = deque()  # submitted, not yet handed to the pool
        self._inflight = 0  # handed to the pool, not finished
        # The window's bounds: set at start, once the number of workers is known.
        self._floor = 1
        self._cap = 1
        self._window = 1.0  # calls the pool may hold (a float: it grows by fractions too)
        self._idle_since: float | None = None  # when the last call ended, while idle
        self._shutdown = False
        self._release_when_idle = False  # shutdown(wait=False) left calls to finish
        self._started = False  # the pool's actors are up

    @property
    def pool(self) -> ShardPool:
        """The :class:`ShardPool` the calls run on (for ``stats()``)."""
        return self._pool

    # --- submitting -------------------------------------------------------------------------

    def submit(
        self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> concurrent.futures.Future[T]:
        """Schedule ``fn(*args, **kwargs)``; return its ``concurrent.futures.Future``.

        The first call starts the pool (its actors), which takes a moment.

        Raises:
            RuntimeError: the executor was shut down.
            shardyard.StartTimeoutError: the pool's actors could not be started.
        """
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        if not self._started:
            self._start()
        fut: _Future[T] = _Future(condition=self._condition)
        # No lock per call: deque.append is atomic, and whoever holds the lock looks at the
        # queue again after releasing it (see _pump).
        self._queue.append((fut, fn, args, kwargs))
        if self._inflight < self._window:
            self._pump()
        return fut

    def _start(self) -> None:
        with self._start_lock:
            if self._started:
                return
            self._pool.start()
            workers = self._pool.num_actors
            # Never more calls in the pool than it takes without blocking (max_pending_items):
            # the window is refilled from the pool's own threads, which must not block.
            most = self._pool.config.max_pending_items
            with self._lock:
                self._floor = max(1, min(workers, most))
                self._cap = max(self._floor, min(workers * WINDOW_MAX_PER_WORKER, most))
                self._window = float(self._floor)
                self._started = True

    def _pump(self) -> None:
        """Hand queued calls to the pool while the window has room; from any thread.

        Never waits for the lock: a thread that finds it taken leaves the queue to the
        holder, and every holder looks at the queue again once it has let go, so no call is
        left behind.
        """
        while self._lock.acquire(blocking=False):
            try:
                take, release = self._take_locked()
            finally:
                self._lock.release()
            self._hand_all(take, release)
            if not (self._queue and self._inflight < self._window):
                return

    def _take_locked(self, fill: bool = True) -> tuple[list[_Call], bool]:
        """Calls to hand over now (marked running; cancelled ones dropped; none unless
        ``fill``), and whether the pool is to be released now (``shutdown(wait=False)``
        found calls left). Under the lock.
        """
        out: list[_Call] = []
        queue = self._queue
        if fill and self._idle_since is not None and queue:
            # Restart after idle (RFC 2861): what the window learnt fades with the pause.
            paused = time.monotonic() - self._idle_since
            self._idle_since = None
            decay = 0.5 ** (paused / WINDOW_HALF_LIFE_S)
            self._window = max(float(self._floor), self._window * decay)
        while fill and queue and self._inflight < self._window:
            call = queue.popleft()
            if call[0].claim():
                self._inflight += 1
                out.append(call)
        release = False
        if not queue and not self._inflight:
            if self._idle_since is None:
                self._idle_since = time.monotonic()
            self._idle.notify_all()
            release, self._release_when_idle = self._release_when_idle, False
        return out, release

    def _hand_all(self, calls: list[_Call], release: bool) -> None:
        """Hand ``calls`` (counted in ``_inflight``, their futures running) to the pool."""
        pool = self._pool
        for fut, fn, args, kwargs in calls:
            t0 = time.monotonic()
            try:
                if pool.closed:  # (closed under us: submit would wait for the closing thread)
                    raise PoolClosedError("the executor's ShardPool is closed")
                pf = pool.submit((fn, args, kwargs))
            except BaseException as exc:  # the pool is closed (or broken): fail this call
                # Without refilling here (the callers look at the queue again): one failure
                # handing over the next would recurse once per queued call.
                with self._lock:
                    self._inflight -= 1
                    _, now = self._take_locked(fill=False)
                release = release or now
                fut.set_exception(exc)
                continue
            pf.add_done_callback(partial(self._finished, fut, t0, self._inflight))
        if release:  # never close the pool from its own threads (this may be one)
            threading.Thread(target=self._pool.close, name="shardyard-executor-close").start()

    def _finished(
        self,
        fut: _Future[Any],
        t0: float,
        handed_with: int,
        pf: concurrent.futures.Future[Any],
    ) -> None:
        """A handed call ended: adapt and refill the window, then resolve the caller's future.

        Runs where the pool resolves its future (Ray's callback thread, mostly): no thread
        hop per call. New calls are handed before ``fut`` is resolved, so the pool is fed
        before the caller's own done-callbacks run.

        Args:
            fut: the caller's future.
            t0: when the call was handed over.
            handed_with: calls in flight then: with the call's latency, the rate the pool
                went at (Little's law), hence the window that would have kept it waiting
                ``WINDOW_TARGET_S``.
            pf: the pool's future.
        """
        latency = time.monotonic() - t0
        with self._lock:
            self._inflight -= 1
            fits = handed_with * WINDOW_TARGET_S / max(latency, 1e-6)
            if latency <= WINDOW_TARGET_S:
                if self._queue:  # grow only where it binds
                    grown = max(self._window + 1.0, min(fits, 2.0 * self._window))
                    self._window = min(float(self._cap), grown)
            else:
                self._window = max(float(self._floor), min(self._window, fits))
            take, release = self._take_locked()
        self._hand_all(take, release)
        if self._queue and self._inflight < self._window:
            self._pump()  # a submit may have found the lock taken
        try:
            value = pf.result()
        except BaseException as exc:
            fut.set_exception(_original(exc))
        else:
            fut.set_result(value)

    # --- map ----------------------------------------------------------------------------------

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[T]:
        """``map(fn, *iterables)`` on the workers, as ``Executor.map`` does it.

        Every call is submitted at once; results come in order from the iterator, which
        raises the exception of a failed call when it reaches that call, and
        ``TimeoutError`` when a result is not there ``timeout`` seconds after this call
        (the calls not yet started are then cancelled). With ``chunksize > 1`` each chunk of
        that many items is one call, as in ``ProcessPoolExecutor`` (much faster for small
        calls).

        Raises:
            ValueError: ``chunksize`` is below 1.
            RuntimeError: the executor was shut down.

        Example:
            >>> with Executor(max_workers=2) as ex:               # doctest: +SKIP
            ...     list(ex.map(pow, [2, 3], [5, 2], chunksize=100))
            [32, 9]
        """
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        if chunksize == 1:
            return super().map(fn, *iterables, timeout=timeout)
        results = super().map(
            partial(_process_chunk, fn), _chunks(iterables, chunksize), timeout=timeout
        )
        return _flatten(results)

    # --- shutting down ------------------------------------------------------------------------

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Take no more calls; release the actors once the calls handed over are done.

        Args:
            wait: block until every call not cancelled has finished, then stop the
                actors. ``False`` returns at once; the actors stop when the last call ends.
            cancel_futures: cancel the calls not yet handed to the pool (their futures
                end cancelled and they never run).
        """
        with self._lock:
            self._shutdown = True
            dropped = list(self._queue) if cancel_futures else []
            if cancel_futures:
                self._queue.clear()
        for call in dropped:
            call[0].cancel()  # never handed over: pending, or cancelled already
        while True:
            with self._lock:
                take, _ = self._take_locked()  # (a pending release is done below, now)
                if not take:
                    if not self._queue and not self._inflight:
                        break
                    if not wait:
                        self._release_when_idle = True  # the last call to end releases
                        return
                    self._idle.wait()
                    continue
            self._hand_all(take, False)  # calls a submit left to this lock's holder
        self._pool.close()
