"""``reduce``: partials combined in each actor, then pairwise across actors (a tree).

The combine order is kept (an associative, non-commutative combine gives the fold's answer),
partials are never changed (reducing twice gives the same answer), both kinds of combine
(new value, in place) work, and a failing combine leaves nothing behind.
"""

from __future__ import annotations

import operator
from collections import Counter
from typing import Any

import pytest

from shardyard import Shard, ShardPool
from shardyard.actors.combine import combine_all

pytestmark = pytest.mark.usefixtures("ray_local")


class Words(Shard):
    def setup(self, shard_id: int) -> None:
        self.counts: Counter[str] = Counter()

    def process_item(self, word: str) -> None:
        self.counts[word] += 1

    def result(self) -> Counter[str]:
        return self.counts


class Ids(Shard):
    """Its partial is the list of its shard id: a non-commutative combine shows the order."""

    def setup(self, shard_id: int) -> None:
        self.sid = shard_id

    def process_item(self, x: Any) -> None:
        return None

    def result(self) -> list[int]:
        return [self.sid]


def _merge(a: Counter[str], b: Counter[str]) -> Counter[str]:
    a.update(b)
    return a


def _words(n: int) -> list[str]:
    return [f"w{(i * 7919) % 997}" for i in range(n)]


@pytest.mark.parametrize("num_actors", [1, 2, 5])
def test_reduce_across_actors_equals_the_serial_count(num_actors: int) -> None:
    words = _words(30_000)
    with ShardPool(Words, num_actors=num_actors, num_shards=4 * num_actors + 1) as pool:
        pool.map(words, keys=words)
        expected = Counter(words)
        assert pool.reduce(operator.add) == expected
        assert pool.reduce(_merge) == expected  # in place: the partials were not changed
        assert pool.reduce(operator.add) == expected
        assert sum(pool.results().values(), Counter()) == expected


def test_reduce_keeps_an_order_that_a_fold_over_the_actors_gives() -> None:
    with ShardPool(Ids, num_actors=3, num_shards=7) as pool:
        pool.map(list(range(50)), keys=list(range(50)))
        out = pool.reduce(operator.add)
        assert sorted(out) == list(range(7))
        placement = pool.placement
        # Each actor's shards in order, actors in order: what a left fold would give.
        by_actor = [sorted(s for s, a in placement.items() if a == i) for i in range(3)]
        assert out == [s for shards in by_actor for s in shards]


class BadCombine(Exception):
    pass


def _fails(a: Any, b: Any) -> Any:
    raise BadCombine("no")


def test_a_failing_combine_raises_and_the_next_reduce_works() -> None:
    words = _words(2_000)
    with ShardPool(Words, num_actors=3, num_shards=6) as pool:
        pool.map(words, keys=words)
        with pytest.raises(BadCombine):
            pool.reduce(_fails)
        assert pool.reduce(operator.add) == Counter(words)


def test_combine_all_folds_in_place_or_builds_a_tree_and_never_changes_a_part() -> None:
    parts = [[i] for i in range(9)]
    assert combine_all(parts, operator.add) == list(range(9))
    calls: list[int] = []

    def extend(a: list[int], b: list[int]) -> list[int]:
        calls.append(len(a))
        a.extend(b)
        return a

    assert combine_all(parts, extend) == list(range(9))
    assert parts == [[i] for i in range(9)]
    assert calls == list(range(1, 9))  # folded into one accumulator: each part read once
    assert combine_all([], operator.add) is None
    only = [{"a": 1}]
    copy = combine_all(only, operator.or_)
    assert copy == only[0] and copy is not only[0]
