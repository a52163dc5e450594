"""Shard -> actor placement tables: balanced, and rebalanced with the fewest shard moves.

A placement maps every logical shard id to the actor hosting it. Balanced means every actor holds
``floor(S / A)`` or ``ceil(S / A)`` of the ``S`` shards over ``A`` actors (within one of even).

:func:`rebalance` keeps as many shards where they are as balance allows. With ``q = S // A`` and
``r = S % A``, ``r`` actors get ``q + 1`` shards and the rest ``q``. An actor keeps
``min(current, target)`` of its shards, so a ``q + 1`` quota only helps an actor already holding
more than ``q``; giving the ``r`` larger quotas to the actors holding the most shards therefore
maximises the shards kept, and every other shard (of removed actors, or over quota) moves once to
an actor below its target. That is the minimum number of moves for a balanced result.

Actors are any hashable identifiers (names, ``ActorID`` s, handles); they need not be comparable:
ties are broken by their order in the given list, which makes the result deterministic.

Example:
    >>> from shardyard.sharding.placement import moved_shards, place, rebalance
    >>> old = place(6, ["a", "b"])
    >>> old
    {0: 'a', 1: 'b', 2: 'a', 3: 'b', 4: 'a', 5: 'b'}
    >>> new = rebalance(old, ["a", "b", "c"])
    >>> moved_shards(old, new)
    [4, 5]
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import TypeVar

__all__ = ["moved_shards", "place", "rebalance", "shard_counts"]

A = TypeVar("A", bound=Hashable)


def _check_actors(actors: Sequence[A]) -> list[A]:
    actor_list = list(actors)
    if not actor_list:
        raise ValueError("at least one actor is needed to place shards")
    if len(set(actor_list)) != len(actor_list):
        raise ValueError("actors must be distinct")
    return actor_list


def place(num_shards: int, actors: Sequence[A]) -> dict[int, A]:
    """Place shards ``0 .. num_shards - 1`` round-robin over the actors (balanced).

    Args:
        num_shards: number of logical shards (>= 0).
        actors: distinct hashable actor identifiers, at least one.

    Returns:
        ``{shard_id: actor}``; every actor holds ``floor`` or ``ceil`` of
        ``num_shards / len(actors)``.

    Raises:
        ValueError: no actors, duplicate actors, or a negative shard count.

    Example:
        >>> place(3, ["x", "y"])
        {0: 'x', 1: 'y', 2: 'x'}
    """
    actor_list = _check_actors(actors)
    if num_shards < 0:
        raise ValueError(f"num_shards must be >= 0, got {num_shards}")
    k = len(actor_list)
    return {s: actor_list[s % k] for s in range(num_shards)}


def shard_counts(placement: Mapping[int, A], actors: Sequence[A] = ()) -> dict[A, int]:
    """Count the shards of every actor (``actors`` listed with 0 if they hold none).

    Example:
        >>> shard_counts({0: "a", 1: "a", 2: "b"}, ["a", "b", "c"])
        {'a': 2, 'b': 1, 'c': 0}
    """
    counts: dict[A, int] = dict.fromkeys(actors, 0)
    for actor in placement.values():
        counts[actor] = counts.get(actor, 0) + 1
    return counts


def rebalance(placement: Mapping[int, A], actors: Sequence[A]) -> dict[int, A]:
    """Return a balanced placement over ``actors`` that moves the fewest shards.

    Works for scale-out, scale-in and any change of the actor set. Actors that stay keep their
    lowest-numbered shards up to their target; freed shards (of removed actors, or above an
    actor's target) go, in ascending shard order, to the actors below target in list order.

    Args:
        placement: the current ``{shard_id: actor}``.
        actors: the new distinct actor identifiers, at least one.

    Returns:
        The new ``{shard_id: actor}`` over the same shard ids (sorted by shard id).

    Raises:
        ValueError: no actors, or duplicate actors.

    Example:
        >>> rebalance({0: "a", 1: "b", 2: "c"}, ["a", "b"])
        {0: 'a', 1: 'b', 2: 'a'}
    """
    actor_list = _check_actors(actors)
    shards = sorted(placement)
    total, k = len(shards), len(actor_list)
    q, r = divmod(total, k)

    held: dict[A, list[int]] = {a: [] for a in actor_list}
    freed: list[int] = []
    for s in shards:
        owner = placement[s]
        if owner in held:
            held[owner].append(s)
        else:
            freed.append(s)

    # The r larger quotas go to the actors holding the most shards (ties: list order).
    by_load = sorted(range(k), key=lambda i: -len(held[actor_list[i]]))
    target = [q] * k
    for i in by_load[:r]:
        target[i] = q + 1

    new: dict[int, A] = {}
    for i, a in enumerate(actor_list):
        keep = held[a][: target[i]]
        freed.extend(held[a][target[i] :])
        for s in keep:
            new[s] = a
    freed.sort()
    it = iter(freed)
    for i, a in enumerate(actor_list):
        for _ in range(target[i] - min(len(held[a]), target[i])):
            new[next(it)] = a
    return dict(sorted(new.items()))


def moved_shards(old: Mapping[int, A], new: Mapping[int, A]) -> list[int]:
    """Return the sorted shard ids whose owner differs between two placements.

    A shard present in only one of them counts as moved.

    Example:
        >>> moved_shards({0: "a", 1: "b"}, {0: "a", 1: "c"})
        [1]
    """
    ids = set(old) | set(new)
    missing = object()
    return sorted(s for s in ids if old.get(s, missing) != new.get(s, missing))
