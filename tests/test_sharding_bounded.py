"""Tests of the "bounded" strategy (shardyard.sharding.bounded)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from shardyard.sharding import BoundedStrategy, RingStrategy, stable_hash

N_KEYS = 1_000_000


def _hashes() -> np.ndarray:
    return stable_hash(np.random.default_rng(7).integers(0, 2**63 - 1, size=N_KEYS))


def _sequential_bounded(s: BoundedStrategy, hashes: np.ndarray) -> dict[int, int]:
    """The rounds algorithm written as a plain loop, as an independent oracle."""
    uniq = sorted(set(hashes.tolist()))
    pts, own = s.points.tolist(), s.owners.tolist()
    cap = s.capacity(len(uniq))
    remaining = [cap] * s.num_shards
    import bisect

    pos = {h: bisect.bisect_left(pts, h) % len(pts) for h in uniq}
    result: dict[int, int] = {}
    pending = list(uniq)
    while pending:
        asked: dict[int, list[int]] = {}
        for h in pending:
            asked.setdefault(own[pos[h]], []).append(h)
        rejected = []
        for shard, hs in asked.items():
            take = hs[: remaining[shard]]
            for h in take:
                result[h] = shard
            remaining[shard] -= len(take)
            rejected += hs[len(take) :]
        pending = sorted(rejected)
        for h in pending:
            p = (pos[h] + 1) % len(pts)
            while remaining[own[p]] == 0:
                p = (p + 1) % len(pts)
            pos[h] = p
    return result


@settings(max_examples=40, deadline=None)
@given(
    keys=st.lists(st.integers(0, 400), max_size=300),
    num_shards=st.integers(1, 12),
    eps=st.sampled_from([0.01, 0.05, 0.3, 1.0]),
)
def test_matches_the_plain_loop_and_respects_capacity(
    keys: list[int], num_shards: int, eps: float
) -> None:
    s = BoundedStrategy(num_shards, eps=eps, vnodes=8)
    h = stable_hash(keys)
    got = s.assign_hashes(h)
    oracle = _sequential_bounded(s, h)
    assert got.tolist() == [oracle[x] for x in h.tolist()]
    n_unique = len(set(keys))
    if n_unique:
        per_shard = np.bincount(
            np.unique(np.stack([h, got.view(np.uint64)]), axis=1)[1].view(np.int64),
            minlength=num_shards,
        )
        assert per_shard.max() <= s.capacity(n_unique)


def test_result_does_not_depend_on_batch_order() -> None:
    h = stable_hash(np.arange(20_000))
    perm = np.random.default_rng(0).permutation(h.size)
    s = BoundedStrategy(16)
    assert (s.assign_hashes(h)[perm] == s.assign_hashes(h[perm])).all()


def test_capacity_is_the_exact_ceiling() -> None:
    assert BoundedStrategy(64).capacity(1_000_000) == 16407  # ceil(1.05 * 15625 = 16406.25)
    assert BoundedStrategy(4, eps=0.25).capacity(1600) == 500  # exact, not 501 from float error
    assert BoundedStrategy(4).capacity(0) == 0


def test_load_is_bounded_on_a_million_keys() -> None:
    s = BoundedStrategy(64)
    counts = np.bincount(s.assign_hashes(_hashes()), minlength=64)
    # max <= ceil(1.05 * mean): 1.05 up to the ceiling of one key (16407 / 15625 = 1.050048).
    assert counts.max() <= s.capacity(N_KEYS)
    assert counts.max() / counts.mean() <= 1.05 + 1 / counts.mean()


def test_mostly_agrees_with_the_plain_ring() -> None:
    h = _hashes()
    differs = BoundedStrategy(64).assign_hashes(h) != RingStrategy(64).assign_hashes(h)
    assert differs.mean() < 0.05


def test_growing_64_to_65_on_the_same_batch_moves_few_keys() -> None:
    h = _hashes()
    before = BoundedStrategy(64).assign_hashes(h)
    after = BoundedStrategy(65).assign_hashes(h)
    assert (before != after).mean() <= 1.15 / 65
