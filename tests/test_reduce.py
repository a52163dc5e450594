"""``reduce``: partials combined in each actor, then pairwise across actors (a tree).

The combine order is kept (an associative, non-commutative combine gives the fold's answer),
partials are never changed (reducing twice gives the same answer), both kinds of combine
(new value, in place) work, and a failing combine leaves nothing behind.
"""

from __future__ import annotations

import functools
import operator
from collections import Counter
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardyard import Shard, ShardPool
from shardyard.actors.combine import combine_all, counters_added

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


_counts = st.one_of(st.integers(-2, 3), st.booleans(), st.sampled_from([1.5, 0.0]))
_counters = st.lists(
    st.dictionaries(st.sampled_from("abcdefgh"), _counts, max_size=4).map(Counter),
    min_size=2,
    max_size=5,
)


@given(_counters)
def test_counters_added_is_counter_addition_whenever_it_answers(parts: list[Any]) -> None:
    """The C path of reduce(operator.add) gives exactly what a + b + ... gives (keys, counts
    and their order), or declines; it never changes a partial (live shard state)."""
    before = [Counter(p) for p in parts]
    got = counters_added(parts)
    assert parts == before
    expected = functools.reduce(operator.add, parts)
    if got is not None:
        assert got == expected and list(got) == list(expected)
        assert all(type(v) is int for v in got.values())


def test_counters_added_declines_shared_keys_and_odd_counts() -> None:
    assert counters_added([Counter(a=1), Counter(b=2)]) == Counter(a=1, b=2)
    assert counters_added([Counter(a=1), Counter(a=1)]) is None  # a shared key
    assert counters_added([Counter(a=1), Counter(b=0)]) is None  # a + b drops b
    assert counters_added([Counter(a=1), Counter(b=True)]) is None  # a bool count
    assert counters_added([Counter(a=1), {"b": 1}]) is None  # not a Counter
