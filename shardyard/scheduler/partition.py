"""Partitioning: which shard each item of a chunk goes to, vectorised.

Keyed items: ``stable_hash`` + the sharding strategy give one shard id per item, then a
stable numpy group-by (argsort + cut points) yields each shard's item indices in input
order. Keyless items: the chunk is cut into contiguous blocks (numpy views, no copy), and a
balancer picks an actor for each block from the live load, then one of its shards.

Example:
    >>> import numpy as np
    >>> from shardyard.sharding import strategy
    >>> p = Partitioner(strategy("hash", 4), np.array([0, 1, 0, 1]), max_block=2)
    >>> [(sid, idx.tolist()) for sid, idx in p.split(4, [5, 6, 5, 7])][:1]  # doctest: +SKIP
    [(1, [0, 2])]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from shardyard.sharding import ShardingStrategy, balancer

PULL = -1  # shard id of keyless groups for the dispatcher's pull queue

__all__ = ["PULL", "Partitioner"]

_ZERO = np.zeros(1, dtype=np.int64)
Groups = list[tuple[int, Any]]  # (shard id, int64 index array or slice into the chunk)
Runs = tuple[np.ndarray, list[int], list[int], list[int]]  # see Partitioner.runs


class Partitioner:
    """Splits chunks of items into per-shard groups.

    Args:
        strategy: key -> shard strategy.
        placement: ``placement[shard_id]`` is the index of the actor hosting the shard.
        max_block: the largest keyless block (the pool's ``max_batch_size``).
        keyless: ``"pull"`` (keyless work goes to a queue that actors pull from), or a
            balancer name that pushes it to actors by load.
        actor_loads: returns the live load per actor (unfinished items, a list), for
            balancing.
    """

    def __init__(
        self,
        strategy: ShardingStrategy,
        placement: np.ndarray,
        max_block: int,
        keyless: str = "pull",
        actor_loads: Callable[[], list[int]] | None = None,
    ) -> None:
        self.strategy = strategy
        self._assign_one = getattr(strategy, "assign_one", None)  # optional scalar fast path
        self._max_block = max_block
        num_actors = int(placement.max()) + 1
        self._actor_shards: list[np.ndarray] = []  # actor index -> its shard ids
        self._cursor: list[int] = []  # a rotating cursor over each actor's shards
        self._active: list[int] = []  # the actors that host shards
        self.set_placement(placement, list(range(num_actors)))
        # "pull": no push decision here; the dispatcher hands keyless work to whichever
        # actor has room (a balancer cannot foresee which actor frees up first).
        self._balancer = None if keyless == "pull" else balancer(keyless)
        self._loads = actor_loads or (lambda: [0] * len(self._actor_shards))

    def set_placement(self, placement: np.ndarray, actors: list[int]) -> None:
        """The shards moved (the pool was scaled): ``placement[shard_id]`` = actor index;
        ``actors`` are the pool's actors (keyless work is balanced over those hosting shards).
        """
        size = max(int(placement.max()) + 1, max(actors, default=-1) + 1)
        self._actor_shards = [np.flatnonzero(placement == a) for a in range(size)]
        self._cursor = self._cursor + [0] * (size - len(self._cursor))
        self._active = [a for a in actors if len(self._actor_shards[a])]

    def split(self, n: int, keys: Any) -> Groups:
        """Groups of item indices per shard for a chunk of ``n`` items with ``keys``."""
        if keys is None:
            return self._keyless(n)
        if n == 1 and self._assign_one is not None and _scalar_keys(keys):
            # One submitted item: a scalar path, numpy's per-call cost would dominate.
            return [(self._assign_one(keys[0]), _ZERO)]
        return self.group(self._assign(n, keys))

    def _assign(self, n: int, keys: Any) -> np.ndarray:
        ids = self.strategy.assign(keys)
        if len(ids) != n:  # e.g. an (n, 0) key array: no item may go unrouted
            raise ValueError(f"{n} keys gave {len(ids)} shard ids: one key per item is needed")
        return ids

    def split_runs(self, n: int, keys: Any) -> Runs | None:
        """As :meth:`split`, for a keyed chunk of several items: :meth:`runs` of its shard
        ids, so a producer gathers the chunk in shard order once and slices each shard's
        run out of it. ``None`` for keyless work or a single item (use :meth:`split`)."""
        if keys is None or n == 1:
            return None
        return self.runs(self._assign(n, keys))

    @staticmethod
    def runs(shard_ids: np.ndarray) -> Runs:
        """Stable group-by as ``(order, shard ids, starts, ends)``: ``order`` lists the
        item indices shard by shard (input order within a shard), and shard ``ids[i]``'s
        items are ``order[starts[i]:ends[i]]``.

        Example:
            >>> order, ids, starts, ends = Partitioner.runs(np.array([3, 1, 3]))
            >>> order.tolist(), ids, starts, ends
            ([1, 0, 2], [1, 3], [0, 1], [1, 3])
        """
        n = len(shard_ids)
        if n == 0:
            return np.zeros(0, dtype=np.intp), [], [], []
        # Shard ids fit 16 bits almost always: numpy sorts those stably by radix, several
        # times faster than a merge sort of int64.
        narrow = shard_ids.astype(np.uint16) if shard_ids.max() < 65536 else None
        order = np.argsort(shard_ids if narrow is None else narrow, kind="stable")
        ordered = shard_ids[order]
        cuts = np.flatnonzero(ordered[1:] != ordered[:-1]) + 1
        starts = np.concatenate(([0], cuts)).tolist()
        ends = np.concatenate((cuts, [n])).tolist()
        heads = ordered[starts].tolist()
        return order, heads, starts, ends

    @staticmethod
    def group(shard_ids: np.ndarray) -> Groups:
        """Stable group-by: ``[(shard_id, indices in input order), ...]``."""
        n = len(shard_ids)
        if n == 1:
            return [(int(shard_ids[0]), np.zeros(1, dtype=np.int64))]
        order, heads, starts, ends = Partitioner.runs(shard_ids)
        return [(sid, order[a:b]) for sid, a, b in zip(heads, starts, ends, strict=True)]

    def _keyless(self, n: int) -> Groups:
        if self._balancer is None:
            return [(PULL, slice(0, n))]  # actors pull keyless work as they have room
        active = self._active
        all_loads = self._loads()
        loads = [all_loads[a] if a < len(all_loads) else 0 for a in active]
        if n == 1:
            return [(self._next_shard(active[self._balancer.choose_one(loads)]), slice(0, 1))]
        blocks = max(1, -(-n // self._max_block))
        # Enough blocks that every actor gets a share of a big chunk.
        blocks = max(blocks, min(len(active), n))
        bounds = np.linspace(0, n, blocks + 1).astype(np.int64).tolist()
        chosen = self._balancer.choose(np.asarray(loads, np.float64), blocks).tolist()
        out: Groups = []
        for i, lo, hi in zip(chosen, bounds[:-1], bounds[1:], strict=True):
            out.append((self._next_shard(active[i]), slice(lo, hi)))
        return out

    def _next_shard(self, actor: int) -> int:
        """The next of ``actor``'s shards, rotating."""
        shards = self._actor_shards[actor]
        if not len(shards):  # it lost its shards to a scale-in meanwhile (another thread)
            shards = self._actor_shards[self._active[0]]
        sid = int(shards[self._cursor[actor] % len(shards)])
        self._cursor[actor] += 1
        return sid


def _scalar_keys(keys: Any) -> bool:
    """Whether each key is one element of ``keys`` (not a row of a 2-D key array, which the
    strategies flatten as a whole)."""
    return not isinstance(keys, np.ndarray) or keys.ndim == 1
