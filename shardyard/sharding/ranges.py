"""The ``"range"`` strategy: sorted boundaries over the key values, fitted from a sample.

With ``num_shards - 1`` sorted boundaries ``b``, a key ``x`` goes to shard
``#{i : b[i] <= x}`` (``np.searchsorted(b, x, side="right")``), so neighbouring keys share a
shard and range scans touch few shards. :meth:`RangeStrategy.fit` places the boundaries at a
sample's quantiles, which keeps shards even under skewed key distributions.

Keys for a range strategy with boundaries are compared by value, not hashed: numeric keys
(integers and floats, including numpy int/uint/float arrays; NaN sorts last) or strings
(``str``/``bytes`` and numpy ``U``/``S`` arrays, compared lexicographically by code point / byte).
The boundaries must be of a comparable kind. One key value is never split across shards, so a
single value carrying more than ``1 / num_shards`` of the load (heavy ties, e.g. integer Zipf
keys) makes its shard heavier than the mean whatever the boundaries.

Without boundaries the strategy splits the 64-bit ``stable_hash`` space into ``num_shards``
even ranges (keys as for every other strategy), until it is fitted.

Example:
    >>> import numpy as np
    >>> from shardyard.sharding.ranges import RangeStrategy
    >>> s = RangeStrategy(3, boundaries=[10, 20])
    >>> s.assign([5, 10, 25]).tolist()
    [0, 1, 2]
    >>> RangeStrategy(4).fit(np.arange(1000)).boundaries.tolist()
    [250, 500, 750]
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from shardyard.config import RangeOptions
from shardyard.errors import UnsupportedKeyError
from shardyard.sharding._common import as_hashes, check_num_shards
from shardyard.sharding.hashing import stable_hash

__all__ = ["RangeStrategy"]

# A fitted strategy keeps this many sample quantiles, so with_num_shards can refit.
_SKETCH_SIZE = 1 << 16


def _value_array(keys: Any) -> np.ndarray:
    if isinstance(keys, np.ndarray):
        arr = keys.ravel()
    elif isinstance(keys, (int, float, str, bytes, np.generic)):
        arr = np.asarray([keys])
    else:
        items = list(keys)
        for pos, k in enumerate(items):
            if isinstance(k, bool) or not isinstance(k, (int, float, str, bytes, np.generic)):
                raise UnsupportedKeyError(type(k).__name__, pos)
        arr = np.asarray(items)
    if arr.dtype.kind == "O":
        for pos, k in enumerate(arr.tolist()):
            if not isinstance(k, (int, float, str, bytes)):
                raise UnsupportedKeyError(type(k).__name__, pos)
        raise UnsupportedKeyError("object", 0)
    if arr.dtype.kind not in "iufUS" and arr.size:
        raise UnsupportedKeyError(str(arr.dtype), 0)
    return arr


def _even_hash_bounds(num_shards: int) -> npt.NDArray[np.uint64]:
    # Shard i covers [ceil(i * 2**64 / n), ceil((i + 1) * 2**64 / n)).
    return np.array([-(-(i << 64) // num_shards) for i in range(1, num_shards)], dtype=np.uint64)


def _kinds_compatible(a: str, b: str) -> bool:
    return (a in "iuf") == (b in "iuf") and (a in "iuf" or a == b)


class RangeStrategy:
    """Shard = number of boundaries ``<=`` the key value (or an even split of the hash space).

    Args:
        num_shards: number of logical shards (>= 1).
        **options: ``boundaries`` — ``num_shards - 1`` non-decreasing values, or ``None``
            (validated by :class:`shardyard.config.RangeOptions`).

    Raises:
        ValueError: the boundaries are not sorted or their count is not ``num_shards - 1``.

    Example:
        >>> s = RangeStrategy(2, boundaries=["m"])
        >>> s.assign(["apple", "zebra"]).tolist()
        [0, 1]
    """

    name = "range"
    keeps_affinity = True

    def __init__(self, num_shards: int, **options: Any) -> None:
        self._num_shards = check_num_shards(num_shards)
        self.options = RangeOptions(**options)
        self._sketch: np.ndarray | None = None  # sorted sample quantiles kept by fit()
        self.boundaries: np.ndarray | None = None
        if self.options.boundaries is not None:
            b = np.asarray(self.options.boundaries)
            if b.ndim != 1 or b.size != self._num_shards - 1:
                raise ValueError(
                    f"range needs num_shards - 1 = {self._num_shards - 1} boundaries, got {b.size}"
                )
            if b.size and (b.dtype.kind not in "iufUS"):
                raise ValueError(f"range boundaries must be numbers or strings, got {b.dtype}")
            if b.size > 1 and not bool((b[1:] >= b[:-1]).all()):
                raise ValueError("range boundaries must be sorted (non-decreasing)")
            self.boundaries = b
        self._hash_bounds = _even_hash_bounds(self._num_shards)

    @property
    def num_shards(self) -> int:
        """The number of logical shards."""
        return self._num_shards

    @property
    def fitted(self) -> bool:
        """Whether the strategy routes by key value (has boundaries).

        Example:
            >>> RangeStrategy(2).fitted, RangeStrategy(2, boundaries=[0]).fitted
            (False, True)
        """
        return self.boundaries is not None

    def assign(self, keys: Any) -> npt.NDArray[np.int64]:
        """Return the shard of every key: by value when fitted, else by stable hash.

        Raises:
            UnsupportedKeyError: a key's type cannot be compared with the boundaries.

        Example:
            >>> RangeStrategy(2, boundaries=[0.5]).assign([0.1, 0.9]).tolist()
            [0, 1]
        """
        if self.boundaries is None:
            return self.assign_hashes(stable_hash(keys))
        values = _value_array(keys)
        if values.size and not _kinds_compatible(values.dtype.kind, self.boundaries.dtype.kind):
            raise UnsupportedKeyError(str(values.dtype), 0)
        return np.searchsorted(self.boundaries, values, side="right").astype(np.int64)

    def assign_hashes(self, hashes: npt.NDArray[np.uint64]) -> npt.NDArray[np.int64]:
        """Return the even hash-space range of every hash (only without boundaries).

        Raises:
            ValueError: the strategy has boundaries; a hash has lost the key's order, so
                call :meth:`assign` with the keys instead.

        Example:
            >>> import numpy as np
            >>> RangeStrategy(2).assign_hashes(np.array([0, 2**63], dtype=np.uint64)).tolist()
            [0, 1]
        """
        if self.boundaries is not None:
            raise ValueError("a fitted range strategy routes by key value; call assign(keys)")
        return np.searchsorted(self._hash_bounds, as_hashes(hashes), side="right").astype(np.int64)

    def fit(self, sample: Any) -> RangeStrategy:
        """Return a new strategy with boundaries at the sample's ``i / num_shards`` quantiles.

        Args:
            sample: key values drawn from the distribution to balance (see the module doc).

        Returns:
            A fitted :class:`RangeStrategy` with the same ``num_shards``.

        Raises:
            ValueError: the sample is empty.

        Example:
            >>> import numpy as np
            >>> keys = np.random.default_rng(0).lognormal(size=10_000)
            >>> s = RangeStrategy(4).fit(keys)
            >>> np.bincount(s.assign(keys), minlength=4).tolist()
            [2500, 2500, 2500, 2500]
        """
        values = np.sort(_value_array(sample))
        if values.size == 0:
            raise ValueError("cannot fit a range strategy on an empty sample")
        if values.size > _SKETCH_SIZE:
            pick = np.arange(_SKETCH_SIZE, dtype=np.float64) * (values.size / _SKETCH_SIZE)
            values = values[pick.astype(np.int64)]
        return self._from_sketch(self._num_shards, values)

    @classmethod
    def _from_sketch(cls, num_shards: int, sketch: np.ndarray) -> RangeStrategy:
        # Boundary i is the first value of shard i: the sorted sample at i * m / n.
        m = sketch.size
        pos = (np.arange(1, num_shards, dtype=np.int64) * m) // num_shards
        bounds = sketch[np.minimum(pos, m - 1)]
        out = cls(num_shards, boundaries=bounds.tolist())
        out._sketch = sketch
        return out

    def with_num_shards(self, num_shards: int) -> RangeStrategy:
        """Return the strategy over ``num_shards`` shards (refitted from the kept sample).

        Raises:
            ValueError: the boundaries were given explicitly (not fitted) and the shard count
                changes; there is no sample to place new boundaries from.

        Example:
            >>> import numpy as np
            >>> RangeStrategy(4).fit(np.arange(100)).with_num_shards(2).boundaries.tolist()
            [50]
        """
        n = check_num_shards(num_shards)
        if self._sketch is not None:
            return self._from_sketch(n, self._sketch)
        if self.boundaries is None or n == self._num_shards:
            return RangeStrategy(n, **self.options.model_dump())
        raise ValueError(
            "range boundaries were given explicitly; call fit(sample) on the new strategy "
            "or pass num_shards - 1 new boundaries"
        )

    def __repr__(self) -> str:
        if self.boundaries is None:
            return f"RangeStrategy(num_shards={self._num_shards})"
        return f"RangeStrategy(num_shards={self._num_shards}, boundaries=<{self.boundaries.size}>)"
