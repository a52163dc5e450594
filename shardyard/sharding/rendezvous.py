"""The ``"rendezvous"`` strategy: highest random weight (HRW) hashing.

Each key scores every shard with a 64-bit mix of ``(key hash, shard seed)`` and goes to the shard
with the highest score. A shard's seed depends only on its id, so adding shard ``n`` moves exactly
the keys whose new score for it beats their old maximum (about ``1 / (n + 1)``), and removing any
shard moves only that shard's keys. The cost is ``O(num_shards)`` per key, computed here as 2-D
numpy blocks over chunks of keys so memory stays bounded.

Example:
    >>> from shardyard.sharding.rendezvous import RendezvousStrategy
    >>> RendezvousStrategy(5).assign(["a", "b", "c"]).shape
    (3,)
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from shardyard.config import RendezvousOptions
from shardyard.sharding._common import HashedStrategy, as_hashes
from shardyard.sharding.hashing import mix64

__all__ = ["RendezvousStrategy", "shard_seeds"]

_SEED_SALT = np.uint64(0x2545F4914F6CDD1D)
_M1 = np.uint64(0xFF51AFD7ED558CCD)
_M2 = np.uint64(0xC4CEB9FE1A85EC53)
_S33 = np.uint64(33)
# Elements per 2-D block: large enough to amortise numpy's per-call cost, small enough to stay
# in cache (16 MiB of uint64 at most for the block and its temporary).
_BLOCK_ELEMS = 1 << 16


def shard_seeds(num_shards: int) -> npt.NDArray[np.uint64]:
    """Return the per-shard seeds (a function of the shard id only).

    Example:
        >>> s = shard_seeds(3)
        >>> bool((shard_seeds(4)[:3] == s).all())
        True
    """
    return mix64(np.arange(num_shards, dtype=np.uint64) ^ _SEED_SALT, copy=False)


class RendezvousStrategy(HashedStrategy):
    """Shard = ``argmax_s weight(stable_hash(key), seed_s)`` (highest random weight).

    The weight is the murmur3 ``fmix64`` finaliser of ``key_hash ^ seed_s``: a full avalanche
    mix, so the scores of one key over different shards are independent for practical purposes.

    Args:
        num_shards: number of logical shards (>= 1).
        **options: none (validated by :class:`shardyard.config.RendezvousOptions`).

    Example:
        >>> s = RendezvousStrategy(8)
        >>> a, b = s.assign(range(100)), s.with_num_shards(9).assign(range(100))
        >>> bool(((a != b) <= (b == 8)).all())  # growing only ever moves keys to the new shard
        True
    """

    name = "rendezvous"
    options_model = RendezvousOptions
    keeps_affinity = True

    def __init__(self, num_shards: int, **options: object) -> None:
        super().__init__(num_shards, **options)
        self._seeds = shard_seeds(self._num_shards)

    def assign_hashes(self, hashes: npt.NDArray[np.uint64]) -> npt.NDArray[np.int64]:
        """Return the highest-weight shard of every hash.

        Example:
            >>> import numpy as np
            >>> RendezvousStrategy(1).assign_hashes(np.array([5], dtype=np.uint64)).tolist()
            [0]
        """
        h = as_hashes(hashes)
        n = self._num_shards
        out = np.empty(h.size, dtype=np.int64)
        if n == 1:
            out[:] = 0
            return out
        seeds = self._seeds[None, :]
        chunk = max(1, _BLOCK_ELEMS // n)
        block = np.empty((chunk, n), dtype=np.uint64)
        tmp = np.empty((chunk, n), dtype=np.uint64)
        for start in range(0, h.size, chunk):
            part = h[start : start + chunk, None]
            m = part.shape[0]
            w, t = block[:m], tmp[:m]
            np.bitwise_xor(part, seeds, out=w)
            # fmix64: w ^= w >> 33; w *= M1; w ^= w >> 33; w *= M2; w ^= w >> 33
            np.right_shift(w, _S33, out=t)
            w ^= t
            w *= _M1
            np.right_shift(w, _S33, out=t)
            w ^= t
            w *= _M2
            np.right_shift(w, _S33, out=t)
            w ^= t
            np.argmax(w, axis=1, out=out[start : start + m])
        return out
