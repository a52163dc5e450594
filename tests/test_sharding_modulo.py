"""Tests of the "hash" strategy (shardyard.sharding.modulo)."""

from __future__ import annotations

import numpy as np

from shardyard.sharding import HashStrategy, stable_hash

N_KEYS = 1_000_000


def _keys() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 2**63 - 1, size=N_KEYS)


def test_is_hash_modulo_num_shards() -> None:
    keys = np.arange(-500, 500)
    expected = (stable_hash(keys) % np.uint64(7)).astype(np.int64)
    assert (HashStrategy(7).assign(keys) == expected).all()


def test_load_is_even_on_a_million_keys() -> None:
    counts = np.bincount(HashStrategy(64).assign(_keys()), minlength=64)
    assert counts.max() / counts.mean() <= 1.05


def test_growing_by_one_shard_moves_almost_every_key() -> None:
    # The contrast with the consistent strategies: mod n -> mod n+1 keeps only ~1/65 of keys.
    h = stable_hash(_keys())
    moved = float((HashStrategy(64).assign_hashes(h) != HashStrategy(65).assign_hashes(h)).mean())
    assert abs(moved - 64 / 65) < 0.01
