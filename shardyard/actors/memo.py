"""A per-shard LRU memo around a pure per-item function (``PoolConfig.memo_size``).

Each shard hosted on an actor gets its own :class:`Memo`, applied by
``ShardActor._new_instance`` (not by ``run_batch``): the wrapper :func:`memoize` returns
stands in for the user's function, so whatever runs the function runs the wrapper.

* Keyed by the item (and its type, so ``1`` and ``1.0`` stay apart, also inside tuples,
  and a float's sign: see :func:`memo_key`); an item that cannot be hashed (a list, an
  array) runs without the memo and counts as ``uncached``.
* Only returned values are kept: an item whose call raised runs again the next time.
* One call per key at a time: the actor runs a blocking function's items on threads and an
  ``async def`` function's items concurrently, so a repeated key often arrives while its
  first call is still running. It waits for that call's output (a hit) instead of running
  the function again; should that call raise, it runs the function itself. So with a large
  enough memo, ``misses`` is exactly the number of distinct keys, however the items
  interleave.
* Thread-safe (one lock guards the table and counters, never held during a call), and an
  ``async def`` function gives an ``async def`` wrapper, so ``inspect.iscoroutinefunction``
  still tells them apart.

Example:
    >>> calls = []
    >>> def square(x):
    ...     calls.append(x)
    ...     return x * x
    >>> f = memoize(square, maxsize=2)
    >>> [f(x) for x in [3, 3, 4, 3]], calls
    ([9, 9, 16, 9], [3, 4])
    >>> memo_of(f).counters()
    {'hits': 2, 'misses': 2, 'uncached': 0, 'evictions': 0}
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import inspect
import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

__all__ = ["Memo", "memo_key", "memo_of", "memoize"]

_MISSING: Any = object()  # "not in the table" (None is a valid output)
_UNHASHABLE: Any = object()  # the key of an item that cannot be hashed
_UNHASHABLE_INSIDE: Any = object()  # a tuple or frozenset holding an unhashable item


def memo_key(item: Any) -> Any:
    """The memo's key of ``item``: equal only for items no pure function can tell apart.

    Python's ``==`` calls ``1``, ``1.0`` and ``True`` equal, and ``0.0`` and ``-0.0``;
    ``repr`` and ``math.copysign`` do not. So the key carries each value's type, a float's
    sign, and goes inside tuples and frozensets.

    Example:
        >>> memo_key(0.0) == memo_key(-0.0), memo_key((1,)) == memo_key((1.0,))
        (False, False)
        >>> memo_key(("a", 2)) == memo_key(("a", 2))
        True
    """
    t = type(item)
    if t is float:
        return (t, item, math.copysign(1.0, item))
    if t is tuple:
        return (t, tuple(memo_key(x) for x in item))
    if t is frozenset:
        return (t, frozenset(memo_key(x) for x in item))
    return (t, item)


_RAISED: Any = object()  # the outcome of a call that raised, for its waiters
_ATTR = "_shardyard_memo"  # the wrapper's attribute holding its Memo

Pending = concurrent.futures.Future  # the output of a key's call in progress


class Memo:
    """A thread-safe LRU table of one shard's outputs, with its counters.

    A call goes :meth:`begin` (a hit, a call to wait for, or this caller runs the
    function), then, for the caller that ran it, :meth:`done` or :meth:`failed`.

    Args:
        maxsize: the most outputs kept (at least 1); the least recently used goes first.

    Attributes:
        hits: items answered without running the function (from the table, or by a call
            of the same key in progress).
        misses: hashable items that ran the function.
        uncached: items that cannot be hashed (the function ran, nothing was kept).
        evictions: outputs dropped to make room.

    Example:
        >>> memo = Memo(maxsize=1)
        >>> key, value, pending = memo.begin("a")
        >>> value is _MISSING and pending is None  # a miss: this caller runs it
        True
        >>> memo.done(key, 1)
        >>> memo.begin("a")[1], memo.counters()["hits"]
        (1, 1)
    """

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize}")
        self.maxsize = maxsize
        self._lock = threading.Lock()  # the tables and counters; never held during a call
        self._table: OrderedDict[Any, Any] = OrderedDict()  # key -> output, oldest use first
        self._running: dict[Any, Pending[Any]] = {}  # key -> its call in progress
        self.hits = 0
        self.misses = 0
        self.uncached = 0
        self.evictions = 0

    def begin(self, item: Any) -> tuple[Any, Any, Pending[Any] | None]:
        """``(key, output, pending)`` for ``item``.

        ``output`` is the kept output (a hit), else ``_MISSING``; then ``pending`` is the
        call of the same key in progress to wait for (see :meth:`waited`), or ``None``:
        the caller runs the function and reports with :meth:`done` or :meth:`failed`.
        """
        try:
            key = memo_key(item)
        except TypeError:  # unhashable inside a tuple
            key = _UNHASHABLE_INSIDE
        with self._lock:
            try:
                if key is _UNHASHABLE_INSIDE:
                    raise TypeError("unhashable")
                value = self._table.get(key, _MISSING)
            except TypeError:  # unhashable
                self.uncached += 1
                return _UNHASHABLE, _MISSING, None
            if value is not _MISSING:
                self.hits += 1
                self._table.move_to_end(key)
                return key, value, None
            pending = self._running.get(key)
            if pending is None:
                self.misses += 1
                self._running[key] = Pending()
            return key, _MISSING, pending

    def waited(self, pending: Pending[Any]) -> Any:
        """The output ``pending`` (finished) gave, counted as a hit; ``_MISSING`` if its
        call raised (the caller then begins again)."""
        value = pending.result()
        if value is _RAISED:
            return _MISSING
        with self._lock:
            self.hits += 1
        return value

    def done(self, key: Any, value: Any) -> None:
        """Keep ``value`` under ``key`` (from :meth:`begin`), evicting the oldest if full,
        and hand it to the callers waiting for it."""
        if key is _UNHASHABLE:
            return
        with self._lock:
            if len(self._table) >= self.maxsize:
                self._table.popitem(last=False)
                self.evictions += 1
            self._table[key] = value
            pending = self._running.pop(key)
        if not pending.done():
            pending.set_result(value)

    def failed(self, key: Any) -> None:
        """The call of ``key`` raised: keep nothing; its waiters run the function anew."""
        if key is _UNHASHABLE:
            return
        with self._lock:
            pending = self._running.pop(key)
        if not pending.done():
            pending.set_result(_RAISED)

    def counters(self) -> dict[str, int]:
        """``{"hits", "misses", "uncached", "evictions"}`` now."""
        with self._lock:
            return {
                "hits": self.hits,
                "misses": self.misses,
                "uncached": self.uncached,
                "evictions": self.evictions,
            }

    def __len__(self) -> int:
        return len(self._table)


def _is_async(fn: Callable[..., Any]) -> bool:
    call = getattr(fn, "__call__", None)  # noqa: B004 (an object whose __call__ is async)
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(call)


def memoize(fn: Callable[[Any], Any], maxsize: int) -> Callable[[Any], Any]:
    """``fn`` (a pure per-item function, sync or ``async def``) behind a new :class:`Memo`.

    Args:
        fn: the function; called with one item.
        maxsize: outputs kept (see :class:`Memo`).

    Returns:
        A function of one item, ``async def`` when ``fn`` is; :func:`memo_of` gives its Memo.

    Raises:
        ValueError: ``maxsize`` is below 1.

    Example:
        >>> import asyncio, inspect
        >>> async def double(x):
        ...     return 2 * x
        >>> f = memoize(double, maxsize=8)
        >>> inspect.iscoroutinefunction(f), asyncio.run(f(21))
        (True, 42)
    """
    memo = Memo(maxsize)
    wrapper: Callable[[Any], Any]
    if _is_async(fn):

        async def memoized_async(item: Any) -> Any:
            while True:
                key, value, pending = memo.begin(item)
                if value is not _MISSING:
                    return value
                if pending is not None:
                    # Shielded: this caller being cancelled must not cancel the call
                    # other callers wait for.
                    await asyncio.shield(asyncio.wrap_future(pending))
                    value = memo.waited(pending)
                    if value is _MISSING:
                        continue  # that call raised: run it here
                    return value
                try:
                    value = await fn(item)
                except BaseException:
                    memo.failed(key)  # nothing kept: the next call runs it again
                    raise
                memo.done(key, value)
                return value

        wrapper = memoized_async
    else:

        def memoized(item: Any) -> Any:
            while True:
                key, value, pending = memo.begin(item)
                if value is not _MISSING:
                    return value
                if pending is not None:
                    concurrent.futures.wait([pending])
                    value = memo.waited(pending)
                    if value is _MISSING:
                        continue
                    return value
                try:
                    value = fn(item)
                except BaseException:
                    memo.failed(key)
                    raise
                memo.done(key, value)
                return value

        wrapper = memoized
    # The user's name in tracebacks and reprs (a callable object may lack one).
    with contextlib.suppress(AttributeError, TypeError):
        functools.update_wrapper(wrapper, fn)
    setattr(wrapper, _ATTR, memo)
    return wrapper


def memo_of(fn: Any) -> Memo | None:
    """The :class:`Memo` behind a function :func:`memoize` returned (else ``None``).

    Example:
        >>> memo_of(memoize(abs, 4)).maxsize, memo_of(abs)
        (4, None)
    """
    memo = getattr(fn, _ATTR, None) if callable(fn) else None
    return memo if isinstance(memo, Memo) else None
