"""Tests of the "jump" strategy (shardyard.sharding.jump)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from shardyard.sharding import JumpStrategy, stable_hash
from shardyard.sharding.jump import jump_hash

N_KEYS = 1_000_000


def _reference_jump(key: int, num_buckets: int) -> int:
    # Lamping & Veach, "A Fast, Minimal Memory, Consistent Hash Algorithm", figure 1.
    b, j = -1, 0
    while j < num_buckets:
        b = j
        key = (key * 2862933555777941757 + 1) & (2**64 - 1)
        j = int((b + 1) * (float(1 << 31) / float((key >> 33) + 1)))
    return b


@settings(max_examples=50, deadline=None)
@given(
    keys=st.lists(st.integers(0, 2**64 - 1), max_size=200),
    num_buckets=st.integers(1, 100_000),
)
def test_matches_the_reference_algorithm_bit_for_bit(keys: list[int], num_buckets: int) -> None:
    got = jump_hash(np.array(keys, dtype=np.uint64), num_buckets).tolist()
    assert got == [_reference_jump(k, num_buckets) for k in keys]


def test_matches_reference_on_many_lanes_with_compaction() -> None:
    # More keys than one block of jump_hash (16,384), and not a multiple of it.
    h = np.random.default_rng(2).integers(0, 2**64, size=40_000, dtype=np.uint64)
    for n in (2, 64, 65, 1 << 20):
        assert jump_hash(h, n).tolist() == [_reference_jump(int(k), n) for k in h]


def _hashes() -> np.ndarray:
    return stable_hash(np.random.default_rng(7).integers(0, 2**63 - 1, size=N_KEYS))


def test_load_is_even_on_a_million_keys() -> None:
    counts = np.bincount(JumpStrategy(64).assign_hashes(_hashes()), minlength=64)
    assert counts.max() / counts.mean() <= 1.05


def test_growing_64_to_65_moves_only_keys_to_the_new_shard() -> None:
    h = _hashes()
    before, after = JumpStrategy(64).assign_hashes(h), JumpStrategy(65).assign_hashes(h)
    moved = before != after
    assert moved.mean() <= 1.15 / 65
    assert (after[moved] == 64).all()


@given(
    st.lists(st.integers(min_value=0, max_value=2**64 - 1), min_size=1, max_size=50),
    st.integers(min_value=1, max_value=100_000),
)
def test_scalar_jump_equals_vectorised(hashes: list[int], num_shards: int) -> None:
    s = JumpStrategy(num_shards)
    vec = s.assign_hashes(np.array(hashes, dtype=np.uint64)).tolist()
    assert [s.assign_hash_one(h) for h in hashes] == vec


def test_assign_one_equals_assign_for_every_strategy() -> None:
    from shardyard.sharding import available_strategies, strategy

    keys: list[object] = [0, 1, 2**40, "alice", b"bob", -7]
    for name in available_strategies():
        s = strategy(name, 13)
        if not hasattr(s, "assign_one"):
            continue
        if name == "bounded":
            # Bounded loads decide per batch: one key alone is a batch of one.
            assert [s.assign_one(k) for k in keys] == [int(s.assign([k])[0]) for k in keys]
        else:
            assert [s.assign_one(k) for k in keys] == s.assign(keys).tolist(), name
