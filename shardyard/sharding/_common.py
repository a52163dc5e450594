"""Helpers shared by the strategy modules (private)."""

from __future__ import annotations

import operator
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["as_hashes", "check_num_shards"]


def check_num_shards(num_shards: Any) -> int:
    """Return ``num_shards`` as an int, or raise if it is not an integer >= 1.

    Example:
        >>> check_num_shards(4)
        4
    """
    if isinstance(num_shards, bool):
        raise TypeError("num_shards must be an integer, not bool")
    n = operator.index(num_shards)
    if n < 1:
        raise ValueError(f"num_shards must be >= 1, got {n}")
    if n > 1 << 31:
        raise ValueError(f"num_shards must be <= 2**31, got {n}")
    return n


def as_hashes(hashes: Any) -> npt.NDArray[np.uint64]:
    """Return ``hashes`` as a 1-D ``uint64`` array without copying when it already is one.

    Example:
        >>> as_hashes([1, 2]).dtype.name
        'uint64'
    """
    arr = np.asarray(hashes)
    if arr.dtype != np.uint64:
        if arr.dtype.kind not in "iu":
            raise TypeError(f"hashes must be a uint64 array, got dtype {arr.dtype}")
        arr = (
            arr.astype(np.int64).view(np.uint64) if arr.dtype.kind == "i" else arr.astype(np.uint64)
        )
    return arr.ravel()


class HashedStrategy:
    """Base of the strategies that route by ``stable_hash`` (private plumbing).

    Subclasses set ``name`` and ``options_model`` and implement ``assign_hashes``; building,
    ``assign``, ``with_num_shards`` and ``repr`` come from here.

    Example:
        >>> from shardyard.sharding.modulo import HashStrategy
        >>> issubclass(HashStrategy, HashedStrategy)
        True
    """

    name: str = ""
    options_model: Any = None

    def __init__(self, num_shards: int, **options: Any) -> None:
        self._num_shards = check_num_shards(num_shards)
        # Validated (pydantic): an unknown or out-of-range option fails here, naming the field.
        self.options = self.options_model(**options)

    @property
    def num_shards(self) -> int:
        """The number of logical shards."""
        return self._num_shards

    def assign(self, keys: Any) -> npt.NDArray[np.int64]:
        """Return the shard id of every key (keys as accepted by ``stable_hash``)."""
        from shardyard.sharding.hashing import stable_hash

        return self.assign_hashes(stable_hash(keys))

    def assign_hashes(self, hashes: npt.NDArray[np.uint64]) -> npt.NDArray[np.int64]:
        raise NotImplementedError

    def assign_one(self, key: Any) -> int:
        """The shard id of one key; equals ``int(assign([key])[0])``.

        Subclasses override it with a scalar path where numpy's per-call cost would dominate
        (a single ``submit`` to an idle pool).
        """
        from shardyard.sharding.hashing import stable_hash_one

        return self.assign_hash_one(stable_hash_one(key))

    def assign_hash_one(self, h: int) -> int:
        """The shard id of one 64-bit hash (Python int)."""
        return int(self.assign_hashes(np.array([h], dtype=np.uint64))[0])

    def with_num_shards(self, num_shards: int) -> Any:
        """Return a strategy of the same kind and options over ``num_shards`` shards."""
        return type(self)(num_shards, **self.options.model_dump())

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.model_dump().items())
        return f"{type(self).__name__}(num_shards={self._num_shards}{', ' if opts else ''}{opts})"
