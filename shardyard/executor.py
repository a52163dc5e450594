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

import atexit
import concurrent.futures
import itertools
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, PENDING, RUNNING
from functools import partial
from types import BuiltinFunctionType
from typing import Any, ParamSpec, TypeVar

from shardyard.config import PoolConfig
from shardyard.errors import PoolClosedError, TaskError
from shardyard.scheduler.futures import ShardFuture
from shardyard.scheduler.pool import ShardPool

__all__ = ["Executor"]

T = TypeVar("T")
P = ParamSpec("P")

# The window of calls handed to the pool (the rest wait in the executor, cancellable) adapts
# to how long a handed call takes to finish, as TCP's congestion window does, and is learnt
# per kind of call (its function's code): a call of a kind not seen finishing fast goes only
# while fewer calls than workers are in the pool, as ProcessPoolExecutor moves about one
# call per worker to its processes. By Little's law the calls in flight when a call was
# handed, over its latency, is the rate the pool went at; times WINDOW_TARGET_S, the window
# that keeps a handed call waiting about that long. While a kind's calls finish within the
# target and calls are waiting, its window grows towards that (at least by one call, at most
# doubling, per call finished); when one takes longer, or the oldest call in the pool has
# already been there longer, it shrinks to it; after a pause it restarts smaller (RFC 2861).
# Calls of a second or more thus keep one call per worker in the pool, while tiny calls
# fill a window of hundreds, which the pool batches into few Ray calls.
WINDOW_TARGET_S = 0.02  # how long a handed call should wait in the pool, about
WINDOW_MAX_PER_WORKER = 1024  # the window's bound, per worker
WINDOW_HALF_LIFE_S = 0.25  # an idle executor's window halves every this many seconds
WINDOW_KINDS = 64  # kinds of call whose windows are kept (the least recently learnt go)

# (future, fn, args, kwargs, kind)
_Call = tuple["_Future[Any]", Callable[..., Any], tuple[Any, ...], dict[str, Any], Any]


class _Handed:
    """A call in the pool: when it was handed over, with how many in flight, its kind."""

    __slots__ = ("done", "kind", "t0", "with_")

    def __init__(self, t0: float, with_: int, kind: Any) -> None:
        self.t0 = t0
        self.with_ = with_
        self.kind = kind
        self.done = False


def _kind(fn: Any) -> Any:
    """What calls of ``fn`` have in common, to learn their speed by: its code, mostly."""
    code = getattr(fn, "__code__", None)
    if code is not None:
        return code
    if isinstance(fn, partial):  # map's chunks: partial(_process_chunk, fn)
        return (_kind(fn.func), *(_kind(a) for a in fn.args if callable(a)))
    if isinstance(fn, BuiltinFunctionType):
        return fn
    return type(fn)


# Executors with calls that may still be outstanding: at interpreter exit their calls are
# waited for (before Ray's own atexit handler stops the actors), as concurrent.futures
# waits for its workers, also after shutdown(wait=False).
_live: weakref.WeakSet[Executor] = weakref.WeakSet()
_exiting = False


def _python_exit() -> None:
    global _exiting
    _exiting = True
    for ex in list(_live):
        ex._drain()


try:
    threading._register_atexit(_python_exit)  # type: ignore[attr-defined]
except AttributeError:  # (not CPython)
    atexit.register(_python_exit)


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
            comes from the window, which the pool batches). ``max_concurrency`` defaults
            to 1: a worker runs one call at a time, also calls that block.

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
        if config is None or "max_concurrency" not in config.model_fields_set:
            pool_options.setdefault("max_concurrency", 1)  # one call at a time per worker
        self._pool = ShardPool(
            _run_call, num_actors=max_workers, config=config, address=address, **pool_options
        )
        self._lock = threading.Lock()  # guards the fields below
        self._idle = threading.Condition(self._lock)  # notified when nothing is outstanding
        self._condition = threading.Condition()  # shared by the futures (see _Future)
        self._start_lock = threading.Lock()
        self._queue: deque[_Call] = deque()  # submitted, not yet handed to the pool
        self._inflight = 0  # handed to the pool, not finished
        # The windows' bounds: set at start, once the number of workers is known.
        self._floor = 1  # the window of a kind of call not seen finishing fast
        self._cap = 1
        # Calls the pool may hold while a call of a kind is next (a float: it grows by
        # fractions too); kinds not here get the floor.
        self._windows: dict[Any, float] = {}
        self._handed: deque[_Handed] = deque()  # calls in the pool, oldest first (and some done)
        self._idle_since: float | None = None  # when the last call ended, while idle
        self._delivery = threading.local()  # .active: this thread is resolving our futures
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
            RuntimeError: the executor was shut down, or the interpreter is exiting.
            shardyard.StartTimeoutError: the pool's actors could not be started.
        """
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        if _exiting:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")
        if not self._started:
            self._start()
        fut: _Future[T] = _Future(condition=self._condition)
        # No lock per call: deque.append is atomic, and whoever holds the lock looks at the
        # queue again after releasing it (see _pump).
        self._queue.append((fut, fn, args, kwargs, _kind(fn)))
        if self._has_room():
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
                self._started = True
            _live.add(self)

    def _has_room(self) -> bool:
        """Whether the next queued call fits in its kind's window (from any thread)."""
        try:
            head = self._queue[0]
        except IndexError:
            return False
        return self._inflight < self._windows.get(head[4], self._floor)

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
            if not self._has_room():
                return

    def _take_locked(self, fill: bool = True) -> tuple[list[_Call], bool]:
        """Calls to hand over now (marked running; cancelled ones dropped; none unless
        ``fill``), and whether the pool is to be released now (``shutdown(wait=False)``
        found calls left). Under the lock.
        """
        out: list[_Call] = []
        queue = self._queue
        if fill and queue:
            now = time.monotonic()
            windows = self._windows
            floor = float(self._floor)
            if self._idle_since is not None:
                # Restart after idle (RFC 2861): what the windows learnt fades with the pause.
                decay = 0.5 ** ((now - self._idle_since) / WINDOW_HALF_LIFE_S)
                self._idle_since = None
                for kind, learnt in windows.items():
                    windows[kind] = max(floor, learnt * decay)
            # The oldest call in the pool, there longer than the target already: its kind's
            # window shrinks now, not only once it has ended.
            handed = self._handed
            while handed and handed[0].done:
                handed.popleft()
            if handed:
                oldest = handed[0]
                age = now - oldest.t0
                known = windows.get(oldest.kind)
                if age > WINDOW_TARGET_S and known is not None:
                    windows[oldest.kind] = max(
                        floor, min(known, oldest.with_ * WINDOW_TARGET_S / age)
                    )
            while queue:
                call = queue[0]
                if call[0]._state == PENDING and self._inflight >= windows.get(call[4], floor):
                    break
                queue.popleft()
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

    def _learn(self, kind: Any, window: float) -> None:
        """Set ``kind``'s window (under the lock); the windows of few kinds are kept."""
        windows = self._windows
        if kind not in windows and len(windows) >= WINDOW_KINDS:
            del windows[next(iter(windows))]
        windows[kind] = window

    def _hand_all(self, calls: list[_Call], release: bool) -> None:
        """Hand ``calls`` (counted in ``_inflight``, their futures running) to the pool."""
        pool = self._pool
        handed = self._handed
        for fut, fn, args, kwargs, kind in calls:
            rec = _Handed(time.monotonic(), self._inflight, kind)
            handed.append(rec)
            try:
                if pool.closed:  # (closed under us: submit would wait for the closing thread)
                    raise PoolClosedError("the executor's ShardPool is closed")
                pf = pool.submit((fn, args, kwargs))
            except BaseException as exc:  # the pool is closed (or broken): fail this call
                # Without refilling here (the callers look at the queue again): one failure
                # handing over the next would recurse once per queued call.
                rec.done = True
                with self._lock:
                    self._inflight -= 1
                    _, now = self._take_locked(fill=False)
                release = release or now
                # (this thread holds the calls after this one: a done-callback must not wait
                # for them in shutdown)
                self._resolve(fut, None, exc)
                continue
            pf.add_done_callback(partial(self._finished, fut, rec))
        if release:  # never close the pool from its own threads (this may be one)
            threading.Thread(target=self._pool.close, name="shardyard-executor-close").start()

    def _finished(
        self, fut: _Future[Any], rec: _Handed, pf: concurrent.futures.Future[Any]
    ) -> None:
        """A handed call ended: adapt and refill the window, then resolve the caller's future.

        Runs where the pool resolves its future (its core thread, mostly): no thread hop per
        call. New calls are handed before ``fut`` is resolved, so the pool is fed before the
        caller's own done-callbacks run.

        Args:
            fut: the caller's future.
            rec: when the call was handed over, with how many calls in flight then (with
                the call's latency, the rate the pool went at, by Little's law, hence the
                window that would have kept it waiting ``WINDOW_TARGET_S``), its kind.
            pf: the pool's future.
        """
        latency = time.monotonic() - rec.t0
        rec.done = True
        with self._lock:
            self._inflight -= 1
            window = self._windows.get(rec.kind)
            fits = rec.with_ * WINDOW_TARGET_S / max(latency, 1e-6)
            if latency <= WINDOW_TARGET_S:
                if self._queue:  # grow only where it binds
                    now = float(self._floor) if window is None else window
                    grown = max(now + 1.0, min(fits, 2.0 * now))
                    self._learn(rec.kind, min(float(self._cap), grown))
            elif window is not None:
                self._windows[rec.kind] = max(float(self._floor), min(window, fits))
            take, release = self._take_locked()
        self._hand_all(take, release)
        if self._has_room():
            self._pump()  # a submit may have found the lock taken
        self._resolve(fut, pf, None)

    def _resolve(
        self,
        fut: _Future[Any],
        pf: concurrent.futures.Future[Any] | None,
        exc: BaseException | None,
    ) -> None:
        """Resolve ``fut`` from ``pf`` (or with ``exc``), this thread marked as delivering:
        a done-callback calling ``shutdown(wait=True)`` here would wait for itself.
        """
        delivery = self._delivery
        outer = getattr(delivery, "active", False)
        delivery.active = True
        try:
            if pf is None:
                fut.set_exception(exc)
                return
            try:
                value = pf.result()
            except BaseException as error:
                fut.set_exception(_original(error))
            else:
                fut.set_result(value)
        finally:
            delivery.active = outer

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
        if wait and getattr(self._delivery, "active", False):
            # A done-callback on the thread that delivers this executor's results: waiting
            # here would wait for itself. As the stdlib's executors do, shut down, then fail.
            self.shutdown(wait=False, cancel_futures=cancel_futures)
            raise RuntimeError("cannot join current thread")
        with self._lock:
            self._shutdown = True
            dropped = list(self._queue) if cancel_futures else []
            if cancel_futures:
                self._queue.clear()
        for call in dropped:
            call[0].cancel()  # never handed over: pending, or cancelled already
        if self._drain(wait):
            self._pool.close()

    def _drain(self, wait: bool = True) -> bool:
        """Hand over the queued calls and wait until every call has ended (``True``); or,
        unless ``wait``, return ``False`` at once, leaving the last call to end to release
        the pool.
        """
        while True:
            with self._lock:
                take, _ = self._take_locked()  # (a pending release is done by the caller)
                if not take:
                    if not self._queue and not self._inflight:
                        return True
                    if not wait:
                        self._release_when_idle = True  # the last call to end releases
                        return False
                    self._idle.wait()
                    continue
            self._hand_all(take, False)  # calls a submit left to this lock's holder
