"""Completion accounting: how many received items are unfinished, and waiting for them.

``wait`` must wait for what was handed over *before* it, not for the pool to go idle
(another thread may keep submitting). Items are counted in *epochs*: each ``wait`` closes
the current epoch and waits until it and every earlier one is empty.

Example:
    >>> c = Completion()
    >>> c.received(3)
    0
    >>> c.finished({0: 3})
    >>> c.wait(c.close_epoch(), timeout=0.1)
    True
"""

from __future__ import annotations

import threading
import time

__all__ = ["Completion"]


class Completion:
    """Unfinished items per wait epoch, with a condition to wait on (thread-safe)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._epoch = 0  # the epoch new items are counted in
        self._open: dict[int, int] = {}  # epoch -> its unfinished items
        self.outstanding = 0  # unfinished items in all epochs

    def received(self, n: int) -> int:
        """Count ``n`` new items; return the epoch they belong to."""
        with self._cond:
            e = self._epoch
            self._open[e] = self._open.get(e, 0) + n
            self.outstanding += n
            return e

    def finished(self, by_epoch: dict[int, int]) -> None:
        """``by_epoch[e]`` items of epoch ``e`` ended."""
        closed = False
        with self._cond:
            for e, n in by_epoch.items():
                self.outstanding -= n
                left = self._open[e] - n
                if left:
                    self._open[e] = left
                else:
                    del self._open[e]
                    closed = True
            if closed:
                self._cond.notify_all()

    def close_epoch(self) -> int:
        """Close the current epoch; return it (items received later count in the next)."""
        with self._cond:
            e = self._epoch
            self._epoch += 1
            return e

    def wait(self, epoch: int, timeout: float | None = None) -> bool:
        """Block until every item of ``epoch`` and earlier ended; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while any(e <= epoch for e in self._open):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
            return True
