"""Partitioner: vectorised group-by and keyless blocks."""

from __future__ import annotations

import numpy as np

from shardyard.scheduler.partition import PULL, Partitioner
from shardyard.scheduler.segments import Segment, concat_items
from shardyard.sharding import strategy


def test_group_by_is_stable_and_complete() -> None:
    ids = np.array([3, 1, 3, 0, 1, 3])
    groups = Partitioner.group(ids)
    assert [(s, i.tolist()) for s, i in groups] == [(0, [3]), (1, [1, 4]), (3, [0, 2, 5])]


def test_keyed_split_matches_strategy() -> None:
    strat = strategy("jump", 8)
    placement = np.arange(8) % 2
    p = Partitioner(strat, placement, max_block=100)
    keys = [f"k{i}" for i in range(1000)]
    groups = p.split(1000, keys)
    expected = strat.assign(keys)
    seen = np.full(1000, -1)
    for sid, idx in groups:
        assert np.all(np.diff(idx) > 0)  # input order within a shard
        seen[idx] = sid
    np.testing.assert_array_equal(seen, expected)


def test_runs_slice_the_items_in_shard_order_and_match_the_groups() -> None:
    strat = strategy("jump", 4096)
    p = Partitioner(strat, np.arange(4096) % 2, max_block=100)
    keys = np.arange(20_000) * 7
    order, ids, starts, ends = p.split_runs(len(keys), keys)  # type: ignore[misc]
    assert sorted(order.tolist()) == list(range(20_000))  # every item once
    assert ids == sorted(set(ids)) and starts[0] == 0 and ends[-1] == 20_000
    assert starts[1:] == ends[:-1]
    groups = p.split(len(keys), keys)
    assert [(s, i.tolist()) for s, i in groups] == [
        (s, order[a:b].tolist()) for s, a, b in zip(ids, starts, ends, strict=True)
    ]
    assert p.split_runs(1, keys[:1]) is None and p.split_runs(5, None) is None
    empty = Partitioner.runs(np.zeros(0, dtype=np.int64))
    assert empty[0].size == 0 and empty[1:] == ([], [], [])


def test_keyless_blocks_cover_the_chunk_and_use_every_actor() -> None:
    placement = np.array([0, 0, 1, 1])
    p = Partitioner(strategy("hash", 4), placement, max_block=10, keyless="round_robin")
    groups = p.split(95, None)
    covered = sorted(i for _, sl in groups for i in range(sl.start, sl.stop))
    assert covered == list(range(95))
    assert all(sl.stop - sl.start <= 10 for _, sl in groups)
    actors = {int(placement[sid]) for sid, _ in groups}
    assert actors == {0, 1}


def test_pull_policy_leaves_keyless_work_to_the_dispatcher() -> None:
    p = Partitioner(strategy("hash", 4), np.array([0, 0, 1, 1]), max_block=10)
    assert p.split(95, None) == [(PULL, slice(0, 95))]


def test_least_loaded_keyless_prefers_idle_actor() -> None:
    placement = np.array([0, 1])
    p = Partitioner(
        strategy("hash", 2),
        placement,
        max_block=10,
        keyless="least_loaded",
        actor_loads=lambda: [1000, 0],
    )
    assert {sid for sid, _ in p.split(10, None)} == {1}


def test_segments_concat_and_split() -> None:
    a = Segment(None, np.arange(3), np.array([1, 2, 3]), None)
    b = Segment(None, np.arange(3, 5), np.array([4, 5]), None)
    assert concat_items([a, b]).tolist() == [1, 2, 3, 4, 5]
    mixed = Segment(None, np.arange(2), ["x", "y"], ["kx", "ky"])
    assert concat_items([a, mixed]) == [1, 2, 3, "x", "y"]
    head, tail = mixed.split(1)
    assert head.items == ["x"] and tail.key_at(0) == "ky"


def test_keyed_segments_are_slices_of_one_gather_and_compact_to_their_own_memory() -> None:
    # Slices of one array gathered for the chunk (no gather per shard); whatever is kept
    # longer (queued behind others, in a replay log) is compacted, so it does not keep the
    # whole chunk alive.
    from shardyard.scheduler.pool import _run_segments

    p = Partitioner(strat := strategy("jump", 64), np.arange(64) % 2, max_block=100)
    items = np.arange(10_000, dtype=np.float64)
    keys = np.arange(10_000) * 3
    segments = _run_segments(None, 100, items, keys, p.split_runs(len(items), keys))  # type: ignore[arg-type]
    assert len(segments) == 64
    ids = strat.assign(keys)
    for sid, seg in segments:
        assert np.array_equal(seg.items, items[seg.ref - 100])
        assert np.array_equal(seg.keys, keys[seg.ref - 100])
        assert (ids[seg.ref - 100] == sid).all()
        own = seg.compacted()
        for part in (own.items, own.ref, own.keys):
            assert part.base is None
        assert np.array_equal(own.items, seg.items) and np.array_equal(own.ref, seg.ref)
    words = [f"w{i}" for i in range(1000)]
    listed = _run_segments(None, 0, words, words, p.split_runs(1000, words))  # type: ignore[arg-type]
    assert sorted(x for _, seg in listed for x in seg.items) == sorted(words)
    assert all(seg.key_at(i) == seg.items[i] for _, seg in listed for i in range(len(seg)))
    picked = listed[0][1].compacted().keys
    assert picked.index.base is None and picked[0] == listed[0][1].keys[0]
