"""Tests of the "ring" strategy (shardyard.sharding.ring)."""

from __future__ import annotations

import bisect

import numpy as np

from shardyard.sharding import RingStrategy, stable_hash
from shardyard.sharding.ring import ring_points

N_KEYS = 1_000_000


def _hashes() -> np.ndarray:
    return stable_hash(np.random.default_rng(7).integers(0, 2**63 - 1, size=N_KEYS))


def test_points_are_sorted_distinct_and_stable_per_shard() -> None:
    points, owners = ring_points(10, 50)
    assert (points[1:] > points[:-1]).all()
    assert np.bincount(owners).tolist() == [50] * 10
    grown, grown_owners = ring_points(11, 50)
    assert set(points.tolist()) <= set(grown.tolist())
    assert set(grown[grown_owners == 10].tolist()).isdisjoint(points.tolist())


def test_assign_is_the_clockwise_successor_with_wraparound() -> None:
    s = RingStrategy(5, vnodes=7)
    pts, own = s.points.tolist(), s.owners.tolist()
    h = np.random.default_rng(1).integers(0, 2**64, size=2000, dtype=np.uint64)
    h[:3] = [0, 2**64 - 1, pts[-1]]
    expected = [own[bisect.bisect_left(pts, int(x)) % len(pts)] for x in h]
    assert s.assign_hashes(h).tolist() == expected
    assert s.assign_hashes(np.array([2**64 - 1], dtype=np.uint64))[0] == own[0]


def test_load_with_default_vnodes_on_a_million_keys() -> None:
    counts = np.bincount(RingStrategy(64).assign_hashes(_hashes()), minlength=64)
    assert counts.max() / counts.mean() <= 1.15


def test_growing_64_to_65_moves_only_keys_to_the_new_shard() -> None:
    h = _hashes()
    before, after = RingStrategy(64).assign_hashes(h), RingStrategy(65).assign_hashes(h)
    moved = before != after
    assert moved.mean() <= 1.15 / 65
    assert (after[moved] == 64).all()
