"""Tests of the "range" strategy (shardyard.sharding.ranges)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from shardyard.errors import UnsupportedKeyError
from shardyard.sharding import RangeStrategy, stable_hash, strategy

Sampler = Callable[[np.random.Generator, int], np.ndarray]


def test_boundaries_route_by_value_right_closed() -> None:
    s = strategy("range", 4, boundaries=[10, 20, 30])
    assert s.assign([-5, 9, 10, 19, 20, 30, 10**6]).tolist() == [0, 0, 1, 1, 2, 3, 3]
    assert s.assign(np.array([9.5, 29.99])).tolist() == [0, 2]


def test_string_keys_are_ordered_lexicographically() -> None:
    s = RangeStrategy(3, boundaries=["g", "p"])
    assert s.assign(["apple", "g", "kiwi", "zebra"]).tolist() == [0, 1, 1, 2]
    assert s.assign(np.array(["h"])).tolist() == [1]


def test_invalid_boundaries_are_rejected() -> None:
    with pytest.raises(ValueError, match="sorted"):
        RangeStrategy(3, boundaries=[5, 1])
    with pytest.raises(ValueError, match="boundaries"):
        RangeStrategy(3, boundaries=[1])


def test_keys_that_cannot_be_ordered_against_the_boundaries_are_rejected() -> None:
    s = RangeStrategy(2, boundaries=[5])
    with pytest.raises(UnsupportedKeyError) as info:
        s.assign([1, None])
    assert info.value.position == 1
    with pytest.raises(UnsupportedKeyError):
        s.assign(["a"])
    with pytest.raises(UnsupportedKeyError) as info:
        s.assign([1, True])
    assert info.value.type_name == "bool"


def test_without_boundaries_splits_the_hash_space_evenly() -> None:
    s = RangeStrategy(4)
    edges = np.array([0, 2**62 - 1, 2**62, 2**63, 3 * 2**62, 2**64 - 1], dtype=np.uint64)
    assert s.assign_hashes(edges).tolist() == [0, 0, 1, 2, 3, 3]
    keys = np.arange(200_000)
    assert (s.assign(keys) == s.assign_hashes(stable_hash(keys))).all()
    counts = np.bincount(RangeStrategy(64).assign(np.arange(1_000_000)), minlength=64)
    assert counts.max() / counts.mean() <= 1.05


def test_a_fitted_strategy_refuses_hashes() -> None:
    with pytest.raises(ValueError, match="assign"):
        RangeStrategy(2, boundaries=[0]).assign_hashes(np.zeros(1, dtype=np.uint64))


SKEWED: dict[str, Sampler] = {
    "lognormal floats": lambda rng, n: rng.lognormal(0.0, 2.0, n),
    "lognormal scaled ints": lambda rng, n: (rng.lognormal(0.0, 2.0, n) * 1e6).astype(np.int64),
    # Zipf-like but continuous (Pareto tail, alpha 1.1): no single value carries weight.
    "pareto (zipf-like, continuous)": lambda rng, n: rng.pareto(1.1, n),
    # The same tail as integer keys: fine-grained enough that no value carries 1/64 of them.
    "pareto scaled ints": lambda rng, n: (rng.pareto(1.1, n) * 1e6).astype(np.int64),
}


@pytest.mark.parametrize("name", sorted(SKEWED))
def test_fit_on_a_skewed_sample_balances_fresh_keys(name: str) -> None:
    rng = np.random.default_rng(11)
    sample, fresh = SKEWED[name](rng, 200_000), SKEWED[name](rng, 1_000_000)
    s = RangeStrategy(64).fit(sample)
    counts = np.bincount(s.assign(fresh), minlength=64)
    assert counts.max() / counts.mean() <= 1.10
    # Unfitted, the same keys by value would be wildly uneven under even value splits.
    assert s.fitted and s.boundaries is not None and s.boundaries.size == 63


def test_heavy_ties_make_one_shard_hot_whatever_the_boundaries() -> None:
    # Integer Zipf (a=1.5): the value 1 alone carries ~38% of keys and one value never
    # splits across shards, so max/mean >= 0.38 * 64. Range is honest about it: the fitted
    # load equals that lower bound within sampling noise.
    rng = np.random.default_rng(5)
    sample, fresh = rng.zipf(1.5, 200_000), rng.zipf(1.5, 1_000_000)
    counts = np.bincount(RangeStrategy(64).fit(sample).assign(fresh), minlength=64)
    top_share = float((fresh == 1).mean())
    assert counts.max() / counts.mean() >= top_share * 64 * 0.999


def test_with_num_shards_refits_from_the_kept_sample() -> None:
    keys = np.random.default_rng(1).lognormal(size=100_000)
    s8 = RangeStrategy(4).fit(keys).with_num_shards(8)
    counts = np.bincount(s8.assign(keys), minlength=8)
    assert s8.num_shards == 8 and counts.max() / counts.mean() <= 1.02
    with pytest.raises(ValueError, match="explicitly"):
        RangeStrategy(3, boundaries=[1, 2]).with_num_shards(4)
    assert RangeStrategy(3, boundaries=[1, 2]).with_num_shards(3).assign([5]).tolist() == [2]


def test_fit_on_an_empty_sample_is_an_error() -> None:
    with pytest.raises(ValueError, match="empty"):
        RangeStrategy(4).fit([])
