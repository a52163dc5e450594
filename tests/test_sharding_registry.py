"""Tests of shardyard.sharding.registry and the ShardingStrategy contract of every strategy."""

from __future__ import annotations

import pickle

import numpy as np
import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardyard.errors import UnknownStrategyError
from shardyard.sharding import (
    HashStrategy,
    ShardingStrategy,
    available_strategies,
    register_strategy,
    stable_hash,
    strategy,
    unregister_strategy,
)

BUILTIN = ["bounded", "hash", "jump", "range", "rendezvous", "ring"]
KEYS = st.lists(
    st.one_of(st.integers(min_value=-(2**70), max_value=2**70), st.text(max_size=8)),
    max_size=60,
)


def test_available_strategies_lists_the_builtins() -> None:
    assert available_strategies() == BUILTIN


def test_unknown_name_lists_the_valid_names() -> None:
    with pytest.raises(UnknownStrategyError) as info:
        strategy("consistent", 8)
    assert isinstance(info.value, ValueError)
    assert info.value.kind == "strategy" and info.value.valid == BUILTIN
    for name in BUILTIN:
        assert name in str(info.value)


@pytest.mark.parametrize(
    ("name", "options", "field"),
    [
        ("ring", {"vnodes": 0}, "vnodes"),
        ("ring", {"bogus": 1}, "bogus"),
        ("bounded", {"eps": 0}, "eps"),
        ("bounded", {"vnodes": -3}, "vnodes"),
        ("hash", {"vnodes": 8}, "vnodes"),
        ("jump", {"seed": 1}, "seed"),
        ("rendezvous", {"x": 1}, "x"),
        ("range", {"boundries": [1]}, "boundries"),
    ],
)
def test_bad_options_raise_validation_error_naming_the_field(
    name: str, options: dict[str, object], field: str
) -> None:
    with pytest.raises(pydantic.ValidationError) as info:
        strategy(name, 8, **options)
    assert info.value.errors()[0]["loc"] == (field,)


@pytest.mark.parametrize("name", BUILTIN)
@pytest.mark.parametrize("bad", [0, -1])
def test_num_shards_below_one_is_rejected(name: str, bad: int) -> None:
    with pytest.raises(ValueError, match="num_shards"):
        strategy(name, bad)


@pytest.mark.parametrize("name", BUILTIN)
def test_every_builtin_satisfies_the_protocol(name: str) -> None:
    s = strategy(name, 16)
    assert isinstance(s, ShardingStrategy)
    assert s.num_shards == 16
    grown = s.with_num_shards(17)
    assert type(grown) is type(s) and grown.num_shards == 17
    keys = np.arange(1000)
    assert s.assign(keys).dtype == np.int64
    assert (s.assign(keys) == s.assign_hashes(stable_hash(keys))).all()
    restored = pickle.loads(pickle.dumps(s))
    assert (restored.assign(keys) == s.assign(keys)).all()


def test_with_num_shards_keeps_the_options() -> None:
    s = strategy("ring", 4, vnodes=32).with_num_shards(5)
    assert s.options.vnodes == 32  # type: ignore[attr-defined]
    b = strategy("bounded", 4, eps=0.5, vnodes=8).with_num_shards(6)
    assert (b.options.eps, b.options.vnodes) == (0.5, 8)  # type: ignore[attr-defined]


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(BUILTIN), num_shards=st.integers(1, 300), keys=KEYS)
def test_shard_ids_are_in_range_for_every_strategy(
    name: str, num_shards: int, keys: list[object]
) -> None:
    s = strategy(name, num_shards)
    ids = s.assign(keys)
    assert ids.dtype == np.int64 and ids.shape == (len(keys),)
    assert ((ids >= 0) & (ids < num_shards)).all()
    # Equal keys always share a shard, whatever the strategy (bounded included).
    assert (s.assign(keys + keys)[: len(keys)] == ids).all()


@settings(max_examples=40, deadline=None)
@given(
    name=st.sampled_from(BUILTIN),
    num_shards=st.integers(1, 2**20),
    hashes=st.lists(st.integers(0, 2**64 - 1), max_size=40),
)
def test_assign_hashes_in_range_over_the_whole_hash_space(
    name: str, num_shards: int, hashes: list[int]
) -> None:
    if name in ("ring", "bounded", "rendezvous"):
        num_shards = min(num_shards, 2000)  # their tables grow with the shard count
    s = strategy(name, num_shards, **({"vnodes": 4} if name in ("ring", "bounded") else {}))
    ids = s.assign_hashes(np.array(hashes, dtype=np.uint64))
    assert ((ids >= 0) & (ids < num_shards)).all()


def test_register_a_user_strategy_and_refuse_silent_replacement() -> None:
    class FirstShard(HashStrategy):
        name = "first"

        def assign_hashes(self, hashes: np.ndarray) -> np.ndarray:
            return np.zeros(len(hashes), dtype=np.int64)

    register_strategy("first", FirstShard)
    try:
        assert "first" in available_strategies()
        assert strategy("first", 3).assign(["a", "b"]).tolist() == [0, 0]
        with pytest.raises(ValueError, match="already registered"):
            register_strategy("first", FirstShard)
        register_strategy("first", HashStrategy, replace=True)
        assert type(strategy("first", 3)) is HashStrategy
    finally:
        unregister_strategy("first")
    assert "first" not in available_strategies()
    with pytest.raises(UnknownStrategyError):
        unregister_strategy("first")
