"""The one interface every key -> shard strategy implements.

A strategy maps keys to logical shard ids in ``[0, num_shards)``. It is pure numpy: no Ray, no
I/O, no state that changes between calls (except where a strategy says so, like ``bounded``,
whose answer depends on the whole batch: its ``keeps_affinity`` is false). Strategies are built
by name with :func:`shardyard.sharding.strategy`.

Example:
    >>> from shardyard.sharding import ShardingStrategy, strategy
    >>> isinstance(strategy("jump", 4), ShardingStrategy)
    True
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

__all__ = ["ShardingStrategy"]


@runtime_checkable
class ShardingStrategy(Protocol):
    """Maps keys to shard ids in ``[0, num_shards)``.

    Attributes:
        num_shards: the number of logical shards.
        keeps_affinity: the same key always maps to the same shard, whatever else is in the
            batch (a class attribute; false only for ``"bounded"`` among the built-ins).

    Example:
        >>> from shardyard.sharding import strategy
        >>> s = strategy("hash", 8)
        >>> s.assign(["a", "b"]).dtype.name, s.with_num_shards(9).num_shards
        ('int64', 9)
        >>> s.keeps_affinity, strategy("bounded", 8).keeps_affinity
        (True, False)
    """

    keeps_affinity: bool
    """The same key always maps to the same shard, whatever else is in the batch."""

    @property
    def num_shards(self) -> int:
        """The number of logical shards."""
        ...

    def assign(self, keys: Any) -> npt.NDArray[np.int64]:
        """Return the shard id of every key (keys as accepted by ``stable_hash``)."""
        ...

    def assign_hashes(self, hashes: npt.NDArray[np.uint64]) -> npt.NDArray[np.int64]:
        """Return the shard id of every key given its ``stable_hash`` (hash once, route often)."""
        ...

    def with_num_shards(self, num_shards: int) -> ShardingStrategy:
        """Return a strategy of the same kind and options over ``num_shards`` shards."""
        ...
