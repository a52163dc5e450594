"""The ``"bounded"`` strategy: consistent hashing with bounded loads.

After Mirrokni, Thorup and Zadimoghaddam, "Consistent Hashing with Bounded Loads" (SODA 2018).

Keys sit on the same vnode ring as the ``"ring"`` strategy, but no shard takes more than
``ceil((1 + eps) * m / num_shards)`` of the ``m`` distinct keys of one :meth:`assign` call (a
batch). A key goes to its ring successor's shard; when that shard is full it walks clockwise to
the next vnode whose shard still has room.

The batch is placed in rounds instead of one key at a time: each round every pending key asks
the shard of its current ring position, each shard accepts pending keys in ascending hash order up
to its remaining capacity, and rejected keys move on to the next vnode of a shard with room left.
The result depends only on the set of keys in the batch, not on their order, and repeated keys
always share one shard (capacity counts distinct keys). Assignments are stable per batch: the same
key can land elsewhere in another batch, so route a stream in fixed batches or use ``"ring"``
when a key must never move between calls.

Example:
    >>> from shardyard.sharding.bounded import BoundedStrategy
    >>> import numpy as np
    >>> s = BoundedStrategy(4, eps=0.25)
    >>> counts = np.bincount(s.assign(np.arange(1000)), minlength=4)
    >>> int(counts.max()) <= 313  # ceil(1.25 * 1000 / 4)
    True
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import numpy.typing as npt

from shardyard.config import BoundedOptions
from shardyard.sharding._common import HashedStrategy, as_hashes
from shardyard.sharding.ring import _SuccessorIndex, ring_points

__all__ = ["BoundedStrategy"]


class BoundedStrategy(HashedStrategy):
    """Ring successor, capped at ``ceil((1 + eps) * distinct_keys / num_shards)`` per shard.

    Args:
        num_shards: number of logical shards (>= 1).
        **options: ``eps`` (default 0.05) and ``vnodes`` (default 256), validated by
            :class:`shardyard.config.BoundedOptions`.

    Attributes:
        keeps_affinity: ``False``: a key's shard depends on the other keys of its batch, so
            one key can reach two shards across batches.

    Example:
        >>> s = BoundedStrategy(8)
        >>> s.capacity(1000)
        132
        >>> s.keeps_affinity
        False
    """

    name = "bounded"
    options_model = BoundedOptions
    # The shard of a key depends on the other keys of the batch (shard capacities).
    keeps_affinity = False

    def __init__(self, num_shards: int, **options: object) -> None:
        super().__init__(num_shards, **options)
        self.points, self.owners = ring_points(self._num_shards, self.options.vnodes)
        self._successor = _SuccessorIndex(self.points)
        # uint16 shard ids let numpy's stable argsort use radix sort (linear time).
        self._sort_dtype = np.uint16 if self._num_shards <= 1 << 16 else np.int64

    def capacity(self, num_keys: int) -> int:
        """Return the per-shard capacity for a batch of ``num_keys`` distinct keys.

        Example:
            >>> BoundedStrategy(4, eps=0.5).capacity(10)
            4
        """
        if num_keys == 0:
            return 0
        # Exact rational arithmetic on the eps as written (0.05, not its binary approximation),
        # so capacities that are whole numbers are not rounded up by float error.
        eps = Fraction(repr(self.options.eps))
        return max(1, math.ceil((1 + eps) * num_keys / self._num_shards))

    def assign_hashes(self, hashes: npt.NDArray[np.uint64]) -> npt.NDArray[np.int64]:
        """Return the bounded-load shard of every hash in the batch.

        Example:
            >>> import numpy as np
            >>> h = np.array([7, 7, 7], dtype=np.uint64)  # one key three times
            >>> len(set(BoundedStrategy(3).assign_hashes(h).tolist()))
            1
        """
        h = as_hashes(hashes)
        if h.size == 0:
            return np.empty(0, dtype=np.int64)
        uniq, inverse = np.unique(h, return_inverse=True)  # sorted: the acceptance order
        result = self._place_unique(uniq)
        return result[inverse.ravel()]

    def _place_unique(self, uniq: npt.NDArray[np.uint64]) -> npt.NDArray[np.int64]:
        n, points, owners = self._num_shards, self.points, self.owners
        size = points.size
        remaining = np.full(n, self.capacity(uniq.size), dtype=np.int64)
        result = np.empty(uniq.size, dtype=np.int64)
        pending = np.arange(uniq.size)  # in ascending hash order, kept so by every step below
        pos = self._successor(uniq).astype(np.intp)
        pos[pos == size] = 0
        while pending.size:
            shard = owners[pos]
            # Group by shard keeping hash order; a key's rank in its group decides acceptance.
            order = np.argsort(shard.astype(self._sort_dtype), kind="stable")
            s_sorted = shard[order]
            counts = np.bincount(s_sorted, minlength=n)
            starts = np.cumsum(counts) - counts
            rank = np.arange(order.size) - starts[s_sorted]
            accepted_sorted = rank < remaining[s_sorted]
            accepted = np.empty_like(accepted_sorted)
            accepted[order] = accepted_sorted
            result[pending[accepted]] = shard[accepted]
            remaining -= np.minimum(counts, remaining)
            rejected = ~accepted
            pending, pos = pending[rejected], pos[rejected]
            if not pending.size:
                break
            # Move each rejected key to the next vnode (clockwise) whose shard has room left;
            # shards only fill up, so skipping full ones now never skips a usable vnode later.
            open_pos = np.flatnonzero(remaining[owners] > 0)
            nxt = np.searchsorted(open_pos, pos, side="right")
            pos = open_pos[nxt % open_pos.size]
        return result
