"""The ``"hash"`` strategy: stable hash modulo the number of shards.

The fastest strategy and perfectly even, but not consistent: changing ``num_shards`` from ``n`` to
``n + 1`` moves about ``n / (n + 1)`` of all keys. Use it when the shard count never changes.

Example:
    >>> from shardyard.sharding.modulo import HashStrategy
    >>> HashStrategy(4).assign([0, 1, 2, 3]).tolist()
    [3, 1, 2, 1]
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from shardyard.config import HashOptions
from shardyard.sharding._common import HashedStrategy, as_hashes

__all__ = ["HashStrategy"]


class HashStrategy(HashedStrategy):
    """Shard = ``stable_hash(key) % num_shards``.

    Args:
        num_shards: number of logical shards (>= 1).
        **options: none (validated by :class:`shardyard.config.HashOptions`).

    Example:
        >>> s = HashStrategy(8)
        >>> int(s.assign(["k"])[0]) == int(s.assign("k")[0])
        True
    """

    name = "hash"
    options_model = HashOptions
    keeps_affinity = True

    def assign_hashes(self, hashes: npt.NDArray[np.uint64]) -> npt.NDArray[np.int64]:
        """Return ``hashes % num_shards`` as ``int64`` shard ids.

        Example:
            >>> import numpy as np
            >>> HashStrategy(3).assign_hashes(np.array([7, 8], dtype=np.uint64)).tolist()
            [1, 2]
        """
        h = as_hashes(hashes)
        out = h % np.uint64(self._num_shards)
        return out.view(np.int64)

    def assign_hash_one(self, h: int) -> int:
        """``h % num_shards`` for one hash, in pure Python."""
        return h % self._num_shards
