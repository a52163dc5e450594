"""Read-only data shared by every shard of a pool: ``shardyard.shared``.

``ShardPool(handler, shared={"table": big})`` puts each value into Ray's object store once,
when the pool starts, and hands the references to every actor it starts (at start, by
``scale``, by the autoscaler, and again to a process Ray restarts). Ray fetches a value
once per node; a numpy array (or anything pickled with out-of-band buffers) is then mapped
read-only from the object store, so every actor and shard of a node reads the same memory.
Other values are unpickled once per actor process.

Inside the handler, ``shardyard.shared`` is a read-only mapping of those values (a
``Shard`` also has it as ``self.shared``). Each actor is a process of its own, serving one
pool, so the mapping is per process. On the driver, outside any actor, reading it raises
``RuntimeError``: several pools may live there, so there is no "current" one (use the
dict you passed, or ``pool.shared``).

Treat the values as read-only: numpy arrays are (writing raises ``ValueError``); a change
to another kind of value stays in that one actor process and is lost if it restarts.

The values reach each actor as its constructor's arguments, so Ray can start a crashed
actor again with them; the pool holds their references until it closes. Ray logs once per
driver process that such an actor needs those objects kept (ray-project/ray#53727).

Example:
    >>> import numpy as np
    >>> import shardyard
    >>> def lookup(i):
    ...     return int(shardyard.shared["table"][i])
    >>> table = np.arange(10) * 10
    >>> with shardyard.ShardPool(lookup, shared={"table": table}) as pool:  # doctest: +SKIP
    ...     pool.map([1, 2, 3])
    [10, 20, 30]
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from ray import cloudpickle

from shardyard.errors import SerializationError

__all__ = ["SharedData", "check_shared", "install", "shared"]

# This process's pool's shared values: set by the ShardActor hosting the process's shards;
# None outside a shard actor (on the driver).
_values: dict[str, Any] | None = None


class SharedData(Mapping[str, Any]):
    """The read-only mapping behind ``shardyard.shared``: this actor's pool's shared values.

    Raises:
        RuntimeError: read outside a shard actor (on the driver).
        KeyError: the pool shares no value of that name (the message lists the names).

    Example:
        >>> shared["table"]  # on the driver
        Traceback (most recent call last):
        ...
        RuntimeError: shardyard.shared is only readable inside a pool's handler (on its ...
    """

    def _current(self) -> dict[str, Any]:
        if _values is None:
            raise RuntimeError(
                "shardyard.shared is only readable inside a pool's handler (on its actors); "
                "on the driver, use the dict passed as ShardPool(shared=...) or pool.shared"
            )
        return _values

    def __getitem__(self, name: str) -> Any:
        values = self._current()
        try:
            return values[name]
        except KeyError:
            names = ", ".join(repr(n) for n in sorted(values)) or "none"
            raise KeyError(
                f"{name!r}: the pool shares no value of that name (shared names: {names})"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._current())

    def __len__(self) -> int:
        return len(self._current())

    def __repr__(self) -> str:
        if _values is None:
            return "<shardyard.shared: empty outside a pool's actors>"
        return f"<shardyard.shared: {', '.join(sorted(_values)) or 'nothing'}>"


shared = SharedData()


def install(values: dict[str, Any]) -> None:
    """Make ``values`` this process's ``shardyard.shared`` (called by the shard actor)."""
    global _values
    _values = dict(values)


def check_shared(values: object) -> dict[str, Any]:
    """Validate ``ShardPool(shared=...)`` on the driver; return it as a new dict.

    Args:
        values: a mapping of str names to picklable values.

    Returns:
        A shallow copy (later changes to the caller's dict do not reach the pool).

    Raises:
        TypeError: ``values`` is not a mapping, or a name is not a str (named).
        shardyard.errors.SerializationError: a value cannot be pickled (its name is given).

    Example:
        >>> check_shared({"table": [1, 2]})
        {'table': [1, 2]}
        >>> check_shared({1: "x"})
        Traceback (most recent call last):
        ...
        TypeError: shared names must be str, got 1 (int)
    """
    if not isinstance(values, Mapping):
        raise TypeError(
            f"shared must be a dict of name -> value, got {type(values).__name__}: "
            "ShardPool(fn, shared={'table': table})"
        )
    out: dict[str, Any] = {}
    for name, value in values.items():
        if not isinstance(name, str):
            raise TypeError(f"shared names must be str, got {name!r} ({type(name).__name__})")
        try:
            # Out-of-band buffers are handed to the callback, not copied: checking a large
            # array costs nothing.
            cloudpickle.dumps(value, protocol=5, buffer_callback=lambda _buffer: None)
        except Exception as exc:
            raise SerializationError(
                f"shared[{name!r}] cannot be pickled for Ray's object store ({exc}); share "
                "data (arrays, dicts, ...), not locks, sockets or open files"
            ) from exc
        out[name] = value
    return out
