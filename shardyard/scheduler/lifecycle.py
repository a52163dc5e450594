"""The life of pools in one driver process: the live ones, and releasing their actors.

A pool's actors are released when it is closed, when it is garbage-collected unclosed (a
finalizer, once its unfinished items ended, so ``ShardPool(f).map(xs)`` on one line leaks
nothing and ``ShardPool(f).submit(x).result()`` works), when the notebook cell
that made it runs again (IPython's output cache keeps a displayed pool referenced, so
collection alone would not do), and by :func:`close_all`.

Example:
    >>> close_all()
    0
"""

from __future__ import annotations

import itertools
import logging
import threading
import weakref
from typing import TYPE_CHECKING, Any

from shardyard.cluster import warm

if TYPE_CHECKING:
    from shardyard.scheduler.pool import ShardPool

__all__ = [
    "close_all",
    "live_pools",
    "register",
    "release",
    "release_when_done",
    "replace_cell_pools",
]

log = logging.getLogger(__name__)

_live: weakref.WeakValueDictionary[int, ShardPool] = weakref.WeakValueDictionary()
_ids = itertools.count()
_lock = threading.Lock()


def register(pool: ShardPool) -> None:
    """Track ``pool`` (weakly) for :func:`close_all` and cell re-runs."""
    with _lock:
        _live[next(_ids)] = pool


def live_pools() -> list[ShardPool]:
    """The pools of this process that are not closed, oldest first."""
    with _lock:
        pools = [p for _, p in sorted(_live.items())]
    return [p for p in pools if not p.closed]


def close_all(wait: bool = False, timeout: float | None = None) -> int:
    """Close every open pool of this process; return how many were closed.

    Args:
        wait: let their outstanding items finish first (``False``: those fail with
            ``PoolClosedError``, as after ``close(wait=False)``).
        timeout: seconds each pool may wait for its items (with ``wait=True``).

    Example:
        >>> import shardyard
        >>> shardyard.close_all()
        0
    """
    pools = live_pools()
    for pool in pools:
        pool.close(wait=wait, timeout=timeout)
    return len(pools)


def replace_cell_pools(pool: ShardPool, cell: tuple[str, int] | None) -> None:
    """Close the pools made by an earlier run of the notebook cell now making ``pool``.

    Pools made by the same run of a cell (a loop) are left alone, and so are pools of
    other cells.
    """
    if cell is None:
        return
    for old in live_pools():
        made = old._cell
        if old is not pool and made is not None and made[0] == cell[0] and made[1] != cell[1]:
            old._close_reason = "the notebook cell that made it was run again"
            old.close(wait=False)


def release(core: Any, store: Any, autoscaler: Any) -> None:
    """Stop a pool's autoscaler and core, kill its actors, close its store.

    ``ShardPool.close`` calls it; for a collected pool it runs through
    :func:`release_when_done`. Called on the core's own loop thread (which it stops) or on
    a thread Python did not start (Ray's callback thread, where killing actors would
    deadlock Ray), e.g. by a done-callback that closes the pool, it hands over to a new
    thread and returns at once.
    """
    current = threading.current_thread()
    if isinstance(current, threading._DummyThread) or (core is not None and core.on_loop_thread()):
        threading.Thread(
            target=release, args=(core, store, autoscaler), name="shardyard-release", daemon=True
        ).start()
        return
    from shardyard.scheduler.core import kill_quietly

    try:
        if autoscaler is not None:
            autoscaler.stop()
        if core is not None:
            core.stop()
            handles = core.all_handles()
            for handle in handles:
                kill_quietly(handle)
            # Their processes died with them: have the embedded Ray start as many again
            # for the next pool (see shardyard.cluster.warm).
            warm.replenish(len(handles))
    finally:
        if store is not None:
            store.close()


def release_when_done(core: Any, store: Any, autoscaler: Any, keep: Any = None) -> None:
    """The finalizer of a started pool: release it once its unfinished items ended.

    It references none of the pool itself (the core works without it), so a future of a
    pool nobody references still resolves: ``ShardPool(f).submit(x).result()`` works. It
    runs in a new thread: a pool may be collected on any thread, Ray's callback thread
    included, where killing actors would deadlock Ray. ``keep`` (the pool's ``shared=``
    object refs) stays referenced until the actors are stopped: an actor that Ray restarts
    meanwhile needs them for its constructor.
    """

    def run() -> None:
        try:
            if core is not None:
                core.wait_idle()
        finally:
            release(core, store, autoscaler)
            del keep_alive[:]

    keep_alive = [keep]
    threading.Thread(target=run, name="shardyard-release", daemon=True).start()
