"""Tests of shardyard.sharding.placement: balanced placement and minimum-move rebalancing."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardyard.sharding import moved_shards, place, rebalance, shard_counts

POOL = [f"a{i}" for i in range(9)]


def _balanced(placement: dict[int, str], actors: list[str]) -> bool:
    counts = Counter(placement.values())
    if set(counts) - set(actors):
        return False
    q = len(placement) // len(actors)
    return all(q <= counts.get(a, 0) <= q + 1 for a in actors)


def _brute_force_min_moves(placement: dict[int, str], actors: list[str]) -> int:
    """Independent oracle: try every choice of which actors get the larger quota."""
    total = len(placement)
    q, r = divmod(total, len(actors))
    current = Counter(placement.values())
    best_kept = max(
        sum(min(current.get(a, 0), q + (a in ceil_set)) for a in actors)
        for ceil_set in map(set, itertools.combinations(actors, r))
    )
    return total - best_kept


def _check(old: dict[int, str], actors: list[str]) -> None:
    new = rebalance(old, actors)
    assert sorted(new) == sorted(old)
    assert _balanced(new, actors)
    assert len(moved_shards(old, new)) == _brute_force_min_moves(old, actors)
    assert rebalance(old, actors) == new  # deterministic


def test_place_is_balanced_round_robin() -> None:
    assert place(5, ["x", "y"]) == {0: "x", 1: "y", 2: "x", 3: "y", 4: "x"}
    for s, k in itertools.product(range(0, 20), range(1, 7)):
        assert _balanced(place(s, POOL[:k]), POOL[:k])


def test_rebalance_exhaustive_small_grid() -> None:
    # Every shard count up to 14 and every before/after actor set drawn from 6 actors.
    subsets = [list(c) for k in range(1, 7) for c in itertools.combinations(POOL[:6], k)]
    for num_shards in range(1, 15):
        for before in subsets:
            old = place(num_shards, before)
            for after in subsets:
                _check(old, after)


@settings(max_examples=300, deadline=None)
@given(
    owners=st.lists(st.sampled_from(POOL), min_size=1, max_size=40),
    after=st.lists(st.sampled_from(POOL), min_size=1, max_size=9, unique=True),
)
def test_rebalance_from_arbitrary_unbalanced_placements_is_minimal(
    owners: list[str], after: list[str]
) -> None:
    _check(dict(enumerate(owners)), after)


def test_scale_out_and_in_move_exactly_the_even_share() -> None:
    old = place(64, POOL[:4])
    grown = rebalance(old, POOL[:5])
    assert len(moved_shards(old, grown)) == 12  # 4 actors keep 13, 13, 13, 13; a4 gets 12
    shrunk = rebalance(grown, POOL[:4])
    assert len(moved_shards(grown, shrunk)) == 12  # only a4's shards move
    assert set(moved_shards(grown, shrunk)) == {s for s, a in grown.items() if a == "a4"}


def test_ceil_quota_goes_to_the_fullest_actors() -> None:
    # a holds 4, b holds 1, c holds 0 of 5 shards; targets are 2, 2, 1. Giving a ceil keeps
    # 2 of a's shards; giving it to c instead would keep fewer.
    old = {0: "a", 1: "a", 2: "a", 3: "a", 4: "b"}
    new = rebalance(old, ["c", "b", "a"])
    assert shard_counts(new, ["a", "b", "c"]) == {"a": 2, "b": 2, "c": 1}
    assert len(moved_shards(old, new)) == 2


def test_actors_need_not_be_comparable() -> None:
    class Handle:
        pass

    handles = [Handle(), Handle(), Handle()]
    table = place(7, handles[:2])
    new = rebalance(table, handles)
    assert _balanced(new, handles)  # type: ignore[arg-type]


def test_errors_and_moved_shards_edges() -> None:
    with pytest.raises(ValueError, match="at least one actor"):
        place(4, [])
    with pytest.raises(ValueError, match="at least one actor"):
        rebalance({0: "a"}, [])
    with pytest.raises(ValueError, match="distinct"):
        place(4, ["a", "a"])
    assert moved_shards({0: "a", 1: "b"}, {0: "a", 2: "b"}) == [1, 2]
    assert rebalance({}, ["a"]) == {}
