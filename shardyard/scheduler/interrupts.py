"""Ctrl-C during a blocking call: noticed at a safe point, so the call can cancel cleanly.

Python raises ``KeyboardInterrupt`` wherever the main thread happens to be, which may be in
the middle of handing items to the scheduler. While a ``map`` waits, :class:`SigintGuard`
replaces Python's default SIGINT handler with one that only records the request; the call
checks it between steps, cancels what it has not sent, and raises a short
``KeyboardInterrupt`` itself. A second Ctrl-C while the call then waits for its items in
flight raises at once (the usual escape hatch); the caller arms that (``armed``) only where
an exception cannot leave the scheduler half-updated.

The guard does nothing outside the main thread, or when SIGINT has a handler other than
Python's default (an application's own, such as ``shardyard run``'s graceful stop, or
IPython's for async cells): those keep their meaning.

Example:
    >>> guard = SigintGuard()
    >>> guard.enter()
    >>> guard.requested
    False
    >>> guard.exit()
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

__all__ = ["Interrupted", "SigintGuard"]


class Interrupted(KeyboardInterrupt):
    """A call noticed Ctrl-C and cancelled its unsent items (internal; the public methods
    raise a plain ``KeyboardInterrupt`` with this message).

    Attributes:
        partial: a stream's outputs that arrived but were not yielded yet.
    """

    partial: list[object] = []  # noqa: RUF012 - replaced per instance, never mutated


class SigintGuard:
    """Defer SIGINT to the caller's next check of :attr:`requested` (main thread only)."""

    def __init__(self) -> None:
        self.requested = False
        self.armed = False  # a second Ctrl-C raises at once (only where that is safe)
        self._installed = False
        self._previous: object = None

    def enter(self) -> None:
        """Install the deferring handler, if SIGINT has Python's default one."""
        if self._installed or threading.current_thread() is not threading.main_thread():
            return
        try:
            if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
                return
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main interpreter
            return
        self._installed = True

    def exit(self) -> None:
        """Put the previous handler back (a no-op when none was installed)."""
        if self._installed:
            self._installed = False
            signal.signal(signal.SIGINT, self._previous)  # type: ignore[arg-type]

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested and self.armed:
            raise KeyboardInterrupt  # pressed again while the call only waits: stop waiting
        self.requested = True
