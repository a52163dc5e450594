"""PoolConfig / ClusterConfig: validation names the field; YAML and env loading."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest

from shardyard import ConfigError, Shard, ShardPool, UnknownStrategyError
from shardyard.config import PoolConfig


def test_defaults_are_valid() -> None:
    cfg = PoolConfig()
    assert cfg.strategy == "jump" and cfg.max_batch_size == 4096


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("num_actors", 0),
        ("max_batch_size", 0),
        ("max_batch_wait_s", -1.0),
        ("max_inflight_per_actor", 0),
        ("keyless", "random"),
        ("checkpoint_every", 0),
    ],
)
def test_invalid_values_name_their_field(field: str, value: object) -> None:
    with pytest.raises(pydantic.ValidationError) as info:
        PoolConfig(**{field: value})
    assert info.value.errors()[0]["loc"] == (field,)


def test_unknown_field_is_rejected() -> None:
    with pytest.raises(pydantic.ValidationError) as info:
        PoolConfig(max_batchsize=3)  # type: ignore[call-arg]
    err = info.value.errors()[0]
    assert err["loc"] == ("max_batchsize",) and err["type"] == "extra_forbidden"


def test_cross_field_check() -> None:
    with pytest.raises(pydantic.ValidationError, match="num_shards"):
        PoolConfig(num_actors=4, num_shards=3)


def test_frozen() -> None:
    cfg = PoolConfig()
    with pytest.raises(pydantic.ValidationError):
        cfg.max_batch_size = 3  # type: ignore[misc]


def test_from_yaml(tmp_path: Path) -> None:
    path = tmp_path / "pool.yaml"
    path.write_text("num_actors: 3\nstrategy: ring\nstrategy_options: {vnodes: 64}\n")
    cfg = PoolConfig.from_yaml(path)
    assert (cfg.num_actors, cfg.strategy, cfg.strategy_options) == (3, "ring", {"vnodes": 64})
    path.write_text("num_actors: -1\n")
    with pytest.raises(pydantic.ValidationError):
        PoolConfig.from_yaml(path)


def test_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHARDYARD_NUM_ACTORS", "5")
    monkeypatch.setenv("SHARDYARD_STRATEGY", "rendezvous")
    cfg = PoolConfig.from_env(max_batch_size=7)
    assert (cfg.num_actors, cfg.strategy, cfg.max_batch_size) == (5, "rendezvous", 7)


# --- ShardPool's configuration (checked at construction; the pool starts lazily, no Ray) ---


class Tally(Shard):
    def process_item(self, item: object) -> None:
        pass


def test_an_explicit_none_is_honoured() -> None:
    assert ShardPool(Tally, checkpoint_every=None).config.checkpoint_every is None
    assert ShardPool(Tally).config.checkpoint_every == 64
    base = PoolConfig(num_actors=3, num_shards=6, num_cpus_per_actor=1.0, strategy="ring")
    cfg = ShardPool(
        Tally, config=base, num_actors=None, num_shards=None, num_cpus_per_actor=None
    ).config
    assert (cfg.num_actors, cfg.num_shards, cfg.num_cpus_per_actor) == (None, None, None)
    # Left out (or strategy=None, which is no strategy): the config's values.
    cfg = ShardPool(Tally, config=base, strategy=None).config
    assert (cfg.num_actors, cfg.num_shards, cfg.strategy) == (3, 6, "ring")
    with pytest.raises(pydantic.ValidationError) as info:
        ShardPool(Tally, max_batch_size=None)  # a field that takes no None says so
    assert info.value.errors()[0]["loc"] == ("max_batch_size",)


def test_range_strategy_without_num_shards_is_checked_at_start() -> None:
    # 15 boundaries fit the 16 shards that 2 actors get by default; the count is known
    # only at start, so construction checks the options model alone.
    pool = ShardPool(
        abs, strategy="range", num_actors=2, strategy_options={"boundaries": list(range(15))}
    )
    assert pool.config.strategy_options == {"boundaries": list(range(15))}
    with pytest.raises(pydantic.ValidationError, match="boundary"):
        ShardPool(abs, strategy="range", strategy_options={"boundary": [1]})
    with pytest.raises(pydantic.ValidationError, match="vnodes"):
        ShardPool(abs, strategy="ring", strategy_options={"vnodes": 0})
    with pytest.raises(UnknownStrategyError, match="valid names"):
        ShardPool(abs, strategy="nope")


def test_range_boundaries_that_do_not_fit_an_explicit_num_shards() -> None:
    with pytest.raises(ConfigError, match="range needs num_shards - 1 = 3 boundaries, got 2"):
        ShardPool(abs, strategy="range", num_shards=4, strategy_options={"boundaries": [1, 2]})
    assert isinstance(ConfigError("x"), ValueError)


@pytest.mark.parametrize("num_shards", [None, 8])
def test_a_shard_needs_a_strategy_that_keeps_key_affinity(num_shards: int | None) -> None:
    with pytest.raises(ConfigError) as info:
        ShardPool(Tally, strategy="bounded", num_shards=num_shards)
    assert str(info.value) == (
        "strategy 'bounded' may send one key to different shards (it balances per batch), "
        "which breaks a Shard's keyed state; use one of: hash, jump, range, rendezvous, ring"
    )
    # A stateless function does not care which shard sees a key.
    assert ShardPool(abs, strategy="bounded", num_shards=num_shards).config.strategy == "bounded"
