"""Sinks: where a batch's outputs land on the driver.

The dispatcher (in the core thread) calls ``deliver`` with the outputs of one segment;
producers and consumers (user threads) wait on the sink. Two kinds:

* :class:`MapSink` collects the outputs of one ``map``/``map_unordered`` call, with
  backpressure: its producer blocks while too many of its items are unfinished.
* :class:`FutureSink` resolves the futures of ``submit`` calls.

Every item ends exactly once here: an output, or an exception in its place, or (for a
``map`` that was interrupted) as cancelled before it ran: delivered with outputs ``None``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from collections import deque
from typing import Any

import numpy as np

from shardyard.scheduler.futures import resolve_many
from shardyard.scheduler.segments import Segment

__all__ = ["FutureSink", "MapSink", "Sink"]

Failures = list[tuple[int, BaseException]]  # (offset within the segment, exception)

log = logging.getLogger(__name__)


class Sink:
    """Receives outputs and failures for segments; called from the core thread."""

    probe_sent_at: float | None = None  # when the dispatch sent this producer's probe

    def deliver(self, seg: Segment, outputs: Any, failures: Failures) -> None:
        raise NotImplementedError

    def deliver_many(self, deliveries: list[tuple[int, Segment, Any, Failures]]) -> None:
        """:meth:`deliver` each ``(shard id, segment, outputs, failures)``; one that fails
        is logged, and the others are delivered all the same."""
        for sid, seg, outputs, failures in deliveries:
            try:
                self.deliver(seg, outputs, failures)
            except Exception:
                log.exception("shardyard: delivering results of shard %d failed", sid)


class MapSink(Sink):
    """Outputs of one ``map`` call, in pieces of ``(positions, outputs)``.

    Args:
        max_pending: the producer blocks while this many items are unfinished.
        keep: keep every piece for assembly (``map``) instead of handing pieces out as they
            arrive (``map_unordered``).
    """

    def __init__(self, max_pending: int, keep: bool) -> None:
        self._cond = threading.Condition()
        self._max_pending = max_pending
        self.keep = keep
        self.submitted = 0  # items handed to the dispatcher
        self.finished = 0  # items with an output or an error
        self.released = 0  # finished items the consumer is done with (stream use)
        self.pieces: deque[tuple[np.ndarray, Any]] = deque()  # (positions, outputs)
        self.errors: list[tuple[int, BaseException]] = []  # (position, exception)
        self._error_cursor = 0  # errors already handed out by take()
        self.cancelled = 0  # items dropped before they ran (Core.cancel)

    # --- producer side -------------------------------------------------------------------

    def add(self, n: int) -> None:
        """Count ``n`` more items as submitted."""
        with self._cond:
            self.submitted += n

    def _held(self) -> int:
        # Items the driver holds for this call: unfinished ones, plus (when streaming)
        # finished ones the consumer has not taken yet.
        return self.submitted - (self.finished if self.keep else self.released)

    def has_capacity(self) -> bool:
        return self._held() < self._max_pending

    def release(self, n: int) -> None:
        """The consumer is done with ``n`` taken items (stream use)."""
        self.released += n

    def wait_capacity(self, timeout: float | None = None) -> bool:
        """Block until the driver holds fewer than ``max_pending`` items of this call.

        Returns:
            False when ``timeout`` passed first.
        """
        with self._cond:
            return self._cond.wait_for(lambda: self._held() < self._max_pending, timeout)

    def all_done(self) -> bool:
        return self.finished == self.submitted

    def wait_all(self, timeout: float | None = None) -> bool:
        """Block until every submitted item has finished (or ``timeout``); True when done."""
        with self._cond:
            return self._cond.wait_for(lambda: self.finished >= self.submitted, timeout)

    def take(
        self, block: bool, timeout: float | None = None
    ) -> tuple[list[tuple[np.ndarray, Any]], list[tuple[int, BaseException]]]:
        """Hand out the pieces and errors that arrived since the last call (unordered use).

        Args:
            block: wait until something arrives or everything has finished.
            timeout: wait at most this long (then hand out what there is, maybe nothing).
        """
        with self._cond:
            if block:
                self._cond.wait_for(
                    lambda: (
                        self.pieces
                        or self._error_cursor != len(self.errors)
                        or self.finished >= self.submitted
                    ),
                    timeout,
                )
            pieces = list(self.pieces)
            self.pieces.clear()
            errors = self.errors[self._error_cursor :]
            self._error_cursor = len(self.errors)
            return pieces, errors

    # --- core side -------------------------------------------------------------------------

    def deliver(self, seg: Segment, outputs: Any, failures: Failures) -> None:
        with self._cond:
            self._deliver(seg, outputs, failures)
            self._cond.notify_all()

    def deliver_many(self, deliveries: list[tuple[int, Segment, Any, Failures]]) -> None:
        # One lock and one wake-up for a reply's segments (thousands with many shards).
        with self._cond:
            for sid, seg, outputs, failures in deliveries:
                self._deliver(seg, outputs, failures, sid)
            self._cond.notify_all()

    def _deliver(self, seg: Segment, outputs: Any, failures: Failures, sid: int = -1) -> None:
        """Take one segment's outcome; if that fails (a bug), its items end with the error:
        every item ends, so the map neither hangs nor returns without them."""
        if outputs is None:  # cancelled before it ran
            self.cancelled += len(seg)
            self.finished += len(seg)
            return
        positions = seg.ref
        try:
            errors: list[tuple[int, BaseException]] = []
            piece: tuple[np.ndarray, Any] | None = None
            if failures:
                failed = np.zeros(len(seg), dtype=bool)
                for off, exc in failures:
                    failed[off] = True
                    errors.append((int(positions[off]), exc))
                ok = np.flatnonzero(~failed)
                if len(ok):
                    kept: Any
                    if isinstance(outputs, np.ndarray):
                        kept = outputs[ok]
                    else:
                        kept = [outputs[i] for i in ok.tolist()]
                    piece = (positions[ok], kept)
            else:
                piece = (positions, outputs)
        except Exception as exc:
            log.exception("shardyard: delivering results of shard %d failed", sid)
            errors, piece = [(int(p), exc) for p in positions], None
        self.errors += errors
        if piece is not None:
            self.pieces.append(piece)
        self.finished += len(seg)


class FutureSink(Sink):
    """Resolves ``submit`` futures; counts unfinished items for submit backpressure.

    The submit path takes no lock while there is room: ``itertools.count`` hands out
    tickets atomically and only the core thread writes ``finished``. A contended lock per
    submit would cost a GIL hand-off each time (milliseconds under load).

    Args:
        max_pending: ``submit`` blocks while this many submitted items are unfinished.
    """

    def __init__(self, max_pending: int) -> None:
        self._cond = threading.Condition()
        self._max_pending = max_pending
        self._tickets = itertools.count()  # atomic under the GIL
        self._blocked = 0  # producers waiting for room
        self.finished = 0  # items delivered (under _cond: deliveries come from several threads)
        self.condition = threading.Condition()  # shared by all futures of the pool

    def add_one(self, block: bool = True) -> None:
        """Count one more submitted item, blocking first while at capacity (if ``block``)."""
        ticket = next(self._tickets)
        if block and ticket - self.finished >= self._max_pending:
            with self._cond:
                self._blocked += 1
                while ticket - self.finished >= self._max_pending:
                    self._cond.wait()
                self._blocked -= 1

    def deliver(self, seg: Segment, outputs: Any, failures: Failures) -> None:
        # Count first: resolving runs the user's done-callbacks, which may submit more.
        # Deliveries come from several threads, hence the lock.
        with self._cond:
            self.finished += len(seg)
            if self._blocked:
                self._cond.notify_all()
        values = outputs.tolist() if isinstance(outputs, np.ndarray) else outputs
        errors = dict(failures) if failures else None
        futures = seg.ref
        aio = [i for i, f in enumerate(futures) if isinstance(f, asyncio.Future)]
        if not aio:
            resolve_many(self.condition, futures, values, errors)
        else:
            # asyncio futures (from asubmit) resolve on their own loop: one hop per loop.
            by_loop: dict[asyncio.AbstractEventLoop, list[int]] = {}
            for i in aio:
                by_loop.setdefault(futures[i].get_loop(), []).append(i)
            for loop, idx in by_loop.items():
                picked = [(futures[i], values[i], errors.get(i) if errors else None) for i in idx]
                loop.call_soon_threadsafe(_resolve_asyncio, picked)
            if len(aio) < len(futures):
                rest = [
                    i for i in range(len(futures)) if not isinstance(futures[i], asyncio.Future)
                ]
                resolve_many(
                    self.condition,
                    [futures[i] for i in rest],
                    [values[i] for i in rest],
                    {k: errors[i] for k, i in enumerate(rest) if i in errors} if errors else None,
                )


def _resolve_asyncio(picked: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for fut, value, exc in picked:
        if fut.done():
            continue  # cancelled meanwhile
        if exc is None:
            fut.set_result(value)
        else:
            fut.set_exception(exc)
