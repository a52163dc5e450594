"""Scaling plans: which actors to add or retire and which shards move, with the fewest moves.

Pure decisions over a placement table (no Ray); the pool carries them out through the core
(:meth:`~shardyard.scheduler.core.Core.migrate`).

Example:
    >>> plan = plan_scale({0: 0, 1: 0, 2: 0, 3: 0}, active=[0], num_actors=2, next_index=1)
    >>> plan.new_actors, plan.moves, plan.retire
    ([1], {2: 1, 3: 1}, [])
    >>> plan_scale({0: 0, 1: 1, 2: 0, 3: 1}, [0, 1], 1, 2).moves
    {1: 0, 3: 0}
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from shardyard.errors import ConfigError
from shardyard.sharding.placement import moved_shards, rebalance

__all__ = ["ScalePlan", "check_scale", "plan_scale"]


@dataclass(frozen=True)
class ScalePlan:
    """What a scale to ``num_actors`` does.

    Attributes:
        new_actors: indices of the actors to start (none on a scale-in).
        retire: indices of the actors to stop once their shards moved away.
        moves: ``{shard_id: new actor index}`` of the shards that move (the fewest that
            balance the new set of actors within one shard).
        placement: the new ``{shard_id: actor index}``.
    """

    new_actors: list[int]
    retire: list[int]
    moves: dict[int, int]
    placement: dict[int, int]


def check_scale(num_actors: object, num_shards: int) -> int:
    """Validate a requested pool size.

    Raises:
        ConfigError: not an int, below 1, or above ``num_shards`` (the most actors a pool
            can be spread over: an actor hosts at least one shard).
    """
    if isinstance(num_actors, bool) or not isinstance(num_actors, int):
        raise ConfigError(f"scale(num_actors) takes an int, got {num_actors!r}")
    if num_actors < 1:
        raise ConfigError(
            f"scale({num_actors}) is refused: a pool needs at least 1 actor; "
            "close() the pool to stop all of them"
        )
    if num_actors > num_shards:
        raise ConfigError(
            f"scale({num_actors}) is refused: the pool has {num_shards} shards, and each actor "
            f"hosts at least one, so it can grow to at most {num_shards} actors. num_shards is "
            f"fixed for a pool's life (as Flink's max parallelism): start a pool with "
            f"num_shards >= {num_actors} to scale that far"
        )
    return num_actors


def plan_scale(
    placement: Mapping[int, int],
    active: list[int],
    num_actors: int,
    next_index: int,
    failed: Collection[int] = (),
) -> ScalePlan:
    """Plan a scale of the actors ``active`` (hosting ``placement``) to ``num_actors``.

    New actors get indices from ``next_index`` on. A scale-in retires actors that were given
    up (``failed``) first, then the newest. The new placement is
    :func:`~shardyard.sharding.placement.rebalance` of the current one over the actors that
    remain, so the moved shards are ``moved_shards(old, new)``: the minimum.
    """
    new_actors: list[int] = []
    retire: list[int] = []
    if num_actors > len(active):
        new_actors = list(range(next_index, next_index + num_actors - len(active)))
    elif num_actors < len(active):
        order = sorted(active, key=lambda a: (a in failed, a), reverse=True)
        retire = sorted(order[: len(active) - num_actors])
    keep = [a for a in active if a not in retire] + new_actors
    table = rebalance(dict(placement), keep)
    moves = {sid: table[sid] for sid in moved_shards(dict(placement), table)}
    return ScalePlan(new_actors, retire, moves, table)
