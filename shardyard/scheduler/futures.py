"""Futures returned by ``ShardPool.submit``: a ``concurrent.futures.Future`` you can await.

Example:
    >>> import asyncio
    >>> from shardyard.scheduler.futures import ShardFuture
    >>> f = ShardFuture()
    >>> f.set_result(3)
    >>> f.result()
    3
    >>> async def main():
    ...     return await f
    >>> asyncio.run(main())
    3
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable, Generator, Sequence
from concurrent.futures._base import FINISHED, PENDING, RUNNING
from typing import Any

__all__ = ["ShardFuture", "resolve_many"]

_DONE = ("FINISHED", "CANCELLED", "CANCELLED_AND_NOTIFIED")


class _NoneYet:
    """What a future's ``_waiters`` / ``_done_callbacks`` read as until one is added: an
    empty sequence whose ``append`` gives the future a list of its own.

    ``concurrent.futures`` appends to both under the future's condition, so the first
    append cannot race another.
    """

    __slots__ = ("name", "owner")

    def __init__(self, owner: Any, name: str) -> None:
        self.owner = owner
        self.name = name

    def __iter__(self) -> Any:
        return iter(())

    def __len__(self) -> int:
        return 0

    def append(self, value: Any) -> None:
        setattr(self.owner, self.name, [value])

    def remove(self, value: Any) -> None:
        raise ValueError(f"{value!r} is not in the list")


class _ListOnFirstAppend:
    """A per-instance list made on first append (a non-data descriptor: once made, the
    instance's own list is found first).

    Most futures never get a waiter or a done-callback; two empty lists per future are two
    more long-lived objects for every full garbage collection to scan, which cost
    ``submit`` more than the rest of its work when many futures are kept.
    """

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        if obj is None:
            return self
        return _NoneYet(obj, self.name)


class ShardFuture(concurrent.futures.Future[Any]):
    """A ``concurrent.futures.Future`` that is also awaitable from any event loop.

    It works with ``concurrent.futures.wait`` and ``as_completed``, and with ``await`` /
    ``asyncio.gather`` in asyncio code. A finished future is awaited without touching the
    event loop, so gathering thousands of already-resolved futures stays cheap.

    The futures of one pool share one ``Condition`` (passed as ``condition``): creating a
    ``Condition`` per future costs more than the rest of a submit, and the core resolves a
    whole batch under one acquisition with one wake-up (see :func:`resolve_many`).

    Attributes:
        shard_id: the logical shard the item was routed to.
        key: the item's key (``None`` for keyless work).
    """

    def __init__(
        self, shard_id: int = -1, key: Any = None, condition: threading.Condition | None = None
    ) -> None:
        if condition is None:
            super().__init__()
        else:
            # The fields Future.__init__ sets (stable since Python 3.2), with a shared lock.
            self._condition = condition
            self._state = PENDING
            self._result = None
            self._exception = None
            # _waiters and _done_callbacks: made on first append (see _ListOnFirstAppend).
        self.shard_id = shard_id
        self.key = key

    _waiters = _ListOnFirstAppend()
    _done_callbacks = _ListOnFirstAppend()

    # Set by the core while the item is in a call: waits for that call's reply in the
    # calling thread and handles it there (one thread hand-off less for a lone waiter).
    _help: Callable[[ShardFuture, float | None], None] | None = None

    def _wait_done(self, timeout: float | None) -> None:
        help_ = self._help
        if help_ is not None:
            self._help = None
            start = time.monotonic()
            help_(self, timeout)
            if timeout is not None:
                timeout = max(0.0, timeout - (time.monotonic() - start))
        # A shared condition wakes for other futures too: wait for this one's state.
        with self._condition:
            if not self._condition.wait_for(lambda: self._state in _DONE, timeout):
                raise concurrent.futures.TimeoutError()

    def result(self, timeout: float | None = None) -> Any:
        """The item's output; raises its error (e.g. ``TaskError``) if it failed."""
        if self._state == FINISHED and self._exception is None:
            # Set before the state, under the condition, and never changed after: no need
            # to take the condition (shared by the pool's futures) to read it.
            return self._result
        if self._state not in _DONE:
            self._wait_done(timeout)
        return super().result(0)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The item's error, or ``None`` if it succeeded."""
        if self._state not in _DONE:
            self._wait_done(timeout)
        return super().exception(0)

    def __await__(self) -> Generator[Any, None, Any]:
        if self._state == FINISHED:
            return self.result()
        return (yield from asyncio.wrap_future(self).__await__())


def resolve_many(
    condition: threading.Condition,
    futures: Sequence[ShardFuture],
    values: Sequence[Any],
    errors: dict[int, BaseException] | None = None,
) -> None:
    """Resolve ``futures`` (sharing ``condition``) with ``values`` or ``errors[offset]``.

    One lock acquisition and one ``notify_all`` for the whole batch; done-callbacks run
    after the lock is released, as ``Future.set_result`` does. Cancelled futures are left
    as they are.
    """
    # A future's own lists, if it has any, are in its __dict__ (see _ListOnFirstAppend):
    # reading them there skips making a _NoneYet per read for the many that have none.
    with condition:
        for off, fut in enumerate(futures):
            if fut._state not in (PENDING, RUNNING):
                continue
            exc = errors.get(off) if errors else None
            waiters = fut.__dict__.get("_waiters")
            if exc is None:
                fut._result = values[off]
                fut._state = FINISHED
                if waiters:
                    for waiter in waiters:
                        waiter.add_result(fut)
            else:
                fut._exception = exc
                fut._state = FINISHED
                if waiters:
                    for waiter in waiters:
                        waiter.add_exception(fut)
        condition.notify_all()
    for fut in futures:
        if fut.__dict__.get("_done_callbacks"):
            fut._invoke_callbacks()  # type: ignore[attr-defined]
