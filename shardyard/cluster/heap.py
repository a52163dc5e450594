"""Keep the driver's long-lived objects out of the garbage collector's full collections.

Once Ray has started, this process holds some hundred thousand objects that live as long
as it does (Ray's worker, the imported modules, their classes and functions). CPython's
full collections rescan all of them each time, and a pool that keeps many futures or
results alive triggers such collections often: in a stream of 200k ``submit`` calls they
took a third of the driver's time and freed nothing. ``gc.freeze()`` moves the objects
alive at that moment into a permanent generation that collections skip, as vLLM and
sglang do after their start-up. Later objects are collected as usual; the cost is that a
reference cycle among the frozen objects that becomes garbage later is never freed.

``ClusterConfig(freeze_gc=False)`` leaves the collector alone. Shard actors do the same in
their own processes (``ShardActor.__init__``).

Example:
    >>> import gc
    >>> freeze_once()
    >>> gc.get_freeze_count() > 0
    True
"""

from __future__ import annotations

import gc
import threading

__all__ = ["freeze_once"]

_lock = threading.Lock()
_done = False


def freeze_once() -> None:
    """``gc.freeze()`` the objects alive now, the first time this is called in a process."""
    global _done
    with _lock:
        if _done:
            return
        _done = True
        gc.freeze()
