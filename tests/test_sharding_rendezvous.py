"""Tests of the "rendezvous" strategy (shardyard.sharding.rendezvous)."""

from __future__ import annotations

import numpy as np

from shardyard.sharding import RendezvousStrategy, stable_hash
from shardyard.sharding.rendezvous import shard_seeds

N_KEYS = 1_000_000


def _hashes() -> np.ndarray:
    return stable_hash(np.random.default_rng(7).integers(0, 2**63 - 1, size=N_KEYS))


def _fmix64(x: int) -> int:
    m = 2**64 - 1
    x ^= x >> 33
    x = (x * 0xFF51AFD7ED558CCD) & m
    x ^= x >> 33
    x = (x * 0xC4CEB9FE1A85EC53) & m
    return x ^ (x >> 33)


def test_picks_the_highest_weight_shard_like_a_scalar_loop() -> None:
    n = 23
    seeds = shard_seeds(n).tolist()
    h = np.random.default_rng(3).integers(0, 2**64, size=3000, dtype=np.uint64)
    expected = []
    for k in h.tolist():
        weights = [_fmix64(k ^ seed) for seed in seeds]
        expected.append(weights.index(max(weights)))
    assert RendezvousStrategy(n).assign_hashes(h).tolist() == expected


def test_load_is_even_on_a_million_keys() -> None:
    counts = np.bincount(RendezvousStrategy(64).assign_hashes(_hashes()), minlength=64)
    assert counts.max() / counts.mean() <= 1.05


def test_growing_64_to_65_moves_only_keys_to_the_new_shard() -> None:
    h = _hashes()
    before = RendezvousStrategy(64).assign_hashes(h)
    after = RendezvousStrategy(65).assign_hashes(h)
    moved = before != after
    assert moved.mean() <= 1.15 / 65
    assert (after[moved] == 64).all()
