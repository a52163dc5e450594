"""Keyless balancing: pick targets (shards or actors) for work that has no key.

Each balancer chooses ``count`` targets among ``len(loads)`` from a live load vector and accounts
for its own picks: every pick adds one unit of load to its target before the next pick.

- ``"round_robin"`` cycles through the targets and ignores the loads.
- ``"least_loaded"`` gives each item to the currently least-loaded target (ties: lowest index),
  computed for a whole batch at once by water-filling.
- ``"power_of_two"`` samples two distinct targets per item and takes the less loaded one
  (ties: the first sampled), from a seeded numpy ``Generator`` so runs can be reproduced.

Example:
    >>> import numpy as np
    >>> from shardyard.sharding.balancing import balancer
    >>> balancer("least_loaded").choose(np.array([3, 0, 1]), count=4).tolist()
    [1, 1, 2, 1]
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from shardyard.errors import UnknownStrategyError

__all__ = [
    "Balancer",
    "LeastLoaded",
    "PowerOfTwoChoices",
    "RoundRobin",
    "available_balancers",
    "balancer",
]


def _check(loads: Any, count: int) -> npt.NDArray[np.float64]:
    arr = np.asarray(loads, dtype=np.float64).ravel()
    if arr.size == 0:
        raise ValueError("there must be at least one target (loads is empty)")
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if not np.isfinite(arr).all():
        raise ValueError("loads must be finite")
    return arr


@runtime_checkable
class Balancer(Protocol):
    """Chooses targets for keyless work from a live load vector.

    Example:
        >>> isinstance(RoundRobin(), Balancer)
        True
    """

    def choose(self, loads: npt.ArrayLike, count: int = 1) -> npt.NDArray[np.int64]:
        """Return ``count`` target indices in ``[0, len(loads))``, in pick order."""
        ...

    def choose_one(self, loads: Sequence[float]) -> int:
        """One pick, in pure Python (for a single submitted item)."""
        ...


class RoundRobin:
    """Cycle through the targets in order, ignoring their loads.

    Args:
        start: the first target index.

    Example:
        >>> rr = RoundRobin()
        >>> rr.choose([0, 0, 0], 2).tolist(), rr.choose([0, 0, 0], 2).tolist()
        ([0, 1], [2, 0])
    """

    name = "round_robin"

    def __init__(self, start: int = 0) -> None:
        self._next = int(start)  # index of the next pick, modulo the current target count

    def choose(self, loads: npt.ArrayLike, count: int = 1) -> npt.NDArray[np.int64]:
        """Return the next ``count`` targets of the cycle.

        Example:
            >>> RoundRobin(start=1).choose([5, 5], 3).tolist()
            [1, 0, 1]
        """
        n = _check(loads, count).size
        out = (self._next + np.arange(count, dtype=np.int64)) % n
        self._next = (self._next + count) % n
        return out

    def choose_one(self, loads: Sequence[float]) -> int:
        """One pick in pure Python (the same cycle as :meth:`choose`).

        Example:
            >>> RoundRobin(start=1).choose_one([0, 0])
            1
        """
        i = self._next % len(loads)
        self._next = (i + 1) % len(loads)
        return i


def water_fill(loads: npt.ArrayLike, count: int) -> npt.NDArray[np.int64]:
    """Greedy least-loaded picks for ``count`` unit items, computed without a per-item loop.

    The greedy pick sequence is the ``count`` smallest pairs ``(loads[i] + k, i)`` for
    ``k = 0, 1, ...`` in lexicographic order. A bisection finds the water level ``T`` with about
    ``count`` pairs at or below it; the pairs up to ``T + 1`` are generated with ``np.repeat``
    and sorted, and the first ``count`` are the picks.

    Args:
        loads: current load of every target.
        count: number of unit items to place.

    Returns:
        The target of every item, in pick order.

    Example:
        >>> water_fill([0, 0, 5], 5).tolist()
        [0, 1, 0, 1, 0]
    """
    lv = _check(loads, count)
    if count == 0:
        return np.empty(0, dtype=np.int64)

    def pairs_at_or_below(level: float) -> int:
        return int(np.floor(np.maximum(level - lv + 1.0, 0.0)).sum())

    lo = float(lv.min())  # pairs <= lo: at least 1
    hi = lo + count  # the least-loaded target alone offers count pairs <= hi
    # Bisect to the smallest level holding >= count pairs (values lie on a grid of lv + k).
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if mid <= lo or mid >= hi:
            break
        if pairs_at_or_below(mid) >= count:
            hi = mid
        else:
            lo = mid
    # One level of margin: float rounding in the bisection must not drop a pair <= the true
    # level; the exact sort below discards the surplus (at most about 2 * len(loads) pairs).
    per_target = np.floor(np.maximum(hi - lv + 2.0, 0.0)).astype(np.int64)
    targets = np.repeat(np.arange(lv.size, dtype=np.int64), per_target)
    starts = np.cumsum(per_target) - per_target
    steps = np.arange(targets.size, dtype=np.int64) - np.repeat(starts, per_target)
    levels = lv[targets] + steps
    order = np.lexsort((targets, levels))[:count]
    return targets[order]


class LeastLoaded:
    """Give each item to the least-loaded target, counting this call's earlier picks.

    Example:
        >>> LeastLoaded().choose([2, 0], 3).tolist()
        [1, 1, 0]
    """

    name = "least_loaded"

    def choose(self, loads: npt.ArrayLike, count: int = 1) -> npt.NDArray[np.int64]:
        """Return the greedy least-loaded targets for ``count`` items (ties: lowest index).

        Example:
            >>> LeastLoaded().choose([1, 1, 0]).tolist()
            [2]
        """
        return water_fill(loads, count)

    def choose_one(self, loads: Sequence[float]) -> int:
        """The least-loaded target (lowest index on ties), in pure Python.

        Example:
            >>> LeastLoaded().choose_one([3, 1, 1])
            1
        """
        return min(range(len(loads)), key=loads.__getitem__)


class PowerOfTwoChoices:
    """For each item sample two distinct targets and take the less loaded one.

    Picks are made in rounds of ``len(loads)`` items: inside a round the comparison sees the
    loads as they were at the round's start plus the picks of earlier rounds, which keeps the
    work vectorised; with one item per call it is the textbook algorithm.

    Args:
        seed: seed of the numpy ``Generator`` (``None``: fresh entropy).

    Example:
        >>> PowerOfTwoChoices(seed=0).choose([0, 100], 3).tolist()
        [0, 0, 0]
    """

    name = "power_of_two"

    def __init__(self, seed: int | None = None) -> None:
        self._rng = np.random.default_rng(seed)
        self._py_rng = random.Random(seed)  # for choose_one: numpy per call costs more

    def choose_one(self, loads: Sequence[float]) -> int:
        """The less loaded of two random distinct targets, in pure Python.

        Example:
            >>> PowerOfTwoChoices(seed=1).choose_one([5, 0])
            1
        """
        n = len(loads)
        if n == 1:
            return 0
        first, second = self._py_rng.sample(range(n), 2)
        return second if loads[second] < loads[first] else first

    def choose(self, loads: npt.ArrayLike, count: int = 1) -> npt.NDArray[np.int64]:
        """Return ``count`` targets, each the less loaded of two random distinct targets.

        Example:
            >>> PowerOfTwoChoices(seed=1).choose([7]).tolist()
            [0]
        """
        lv = _check(loads, count).copy()
        n = lv.size
        out = np.empty(count, dtype=np.int64)
        if n == 1:
            out[:] = 0
            return out
        for start in range(0, count, n):
            m = min(n, count - start)
            first = self._rng.integers(0, n, size=m)
            second = self._rng.integers(0, n - 1, size=m)
            second += second >= first  # distinct from first, still uniform
            pick = np.where(lv[second] < lv[first], second, first)
            out[start : start + m] = pick
            lv += np.bincount(pick, minlength=n)
        return out


# name -> balancer class, built with its keyword options.
_BALANCERS: dict[str, type[Any]] = {
    "round_robin": RoundRobin,
    "least_loaded": LeastLoaded,
    "power_of_two": PowerOfTwoChoices,
}


def available_balancers() -> list[str]:
    """Return the balancer names, sorted.

    Example:
        >>> available_balancers()
        ['least_loaded', 'power_of_two', 'round_robin']
    """
    return sorted(_BALANCERS)


def balancer(name: str, **options: Any) -> Balancer:
    """Build the balancer registered as ``name``.

    Args:
        name: ``"round_robin"``, ``"least_loaded"`` or ``"power_of_two"``.
        **options: the balancer's keyword options (``start`` for round robin, ``seed`` for
            power of two).

    Raises:
        UnknownStrategyError: unknown name (a ``ValueError`` listing the valid names).
        TypeError: an unknown option.

    Example:
        >>> balancer("power_of_two", seed=3).choose([0, 0, 9], 2).shape
        (2,)
    """
    try:
        cls = _BALANCERS[name]
    except (KeyError, TypeError):
        raise UnknownStrategyError("balancer", str(name), list(_BALANCERS)) from None
    result: Balancer = cls(**options)
    return result
