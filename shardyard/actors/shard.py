"""The user-facing base class for keyed, stateful work.

A :class:`Shard` is to shardyard what an entity is to Akka Cluster Sharding or a keyed
operator to Flink: one instance per logical shard, living inside a shard actor process,
seeing every item whose key routes to that shard, in submission order.

Example:
    >>> from collections import Counter
    >>> from shardyard import Shard
    >>> class WordCount(Shard):
    ...     def setup(self, shard_id):
    ...         self.counts = Counter()
    ...     def process_item(self, word):
    ...         self.counts[word] += 1
    ...     def result(self):
    ...         return self.counts
    >>> s = WordCount()
    >>> s.setup(0)
    >>> s.process(["a", "b", "a"])
    [None, None, None]
    >>> s.result()["a"]
    2
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from shardyard.actors.shared import shared as shared_values

__all__ = ["Shard"]


class _PoolShared:
    """``Shard.shared``: the pool's shared values (see :mod:`shardyard.actors.shared`).

    Read through the class, so never part of a snapshot. Only ``__get__``: a subclass
    that sets an attribute of its own named ``shared`` keeps it (the instance's wins).
    """

    def __get__(self, instance: object, owner: type | None = None) -> Mapping[str, Any]:
        return shared_values


class Shard:
    """Base class for keyed, stateful work; subclass it and pass the class to ``ShardPool``.

    Override ``process_item`` (one item at a time: a failing item fails alone) or
    ``process`` (a whole batch at once, sync or ``async def``: an exception fails every item
    of that batch). Override ``result`` to return the shard's partial result, which
    ``ShardPool.results()`` collects and ``ShardPool.reduce()`` combines.

    ``snapshot()`` and ``restore(state)`` move a shard's state (migration, recovery). The
    defaults copy the instance's attributes, which suits state made of picklable values.

    Attributes:
        shard_id: the logical shard this instance serves (set before ``setup``).
        shared: the pool's read-only shared values, ``ShardPool(..., shared={...})``
            (the same mapping as ``shardyard.shared``; usable from ``setup`` on).
    """

    shard_id: int = -1
    shared = _PoolShared()

    def setup(self, shard_id: int) -> None:
        """Called once when the shard is placed on an actor, before any item arrives.

        Args:
            shard_id: the logical shard id, in ``[0, num_shards)``.
        """

    def process(self, batch: Sequence[Any]) -> Sequence[Any] | None:
        """Handle one batch of this shard's items, in submission order.

        The default calls :meth:`process_item` on each item. May be ``async def``.

        Args:
            batch: the items in the type they came in (a list for a list, an iterator or
                ``submit``s; a numpy array for an array), or as ``PoolConfig.batch_format``
                asks; a list when one batch joins items of different sources.

        Returns:
            One output per item (returned by ``map`` and the futures), or ``None`` when the
            shard only accumulates state (every item's output is then ``None``).
        """
        return [self.process_item(item) for item in batch]

    def process_item(self, item: Any) -> Any:
        """Handle one item; override this or :meth:`process`.

        Raises:
            NotImplementedError: neither ``process`` nor ``process_item`` was overridden.
        """
        raise NotImplementedError(
            f"{type(self).__name__} must override process(batch) or process_item(item)"
        )

    def result(self) -> Any:
        """Return this shard's partial result (``None`` by default)."""
        return None

    def snapshot(self) -> Any:
        """Return the shard's state, to be handed to :meth:`restore` elsewhere.

        The default returns a shallow copy of the instance's attributes.
        """
        return dict(vars(self))

    def restore(self, state: Any) -> None:
        """Take over state produced by :meth:`snapshot` (replaces ``setup``'s fresh state)."""
        vars(self).update(state)
