"""PoolConfig / ClusterConfig: validation names the field; YAML and env loading."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest

from shardyard.config import PoolConfig


def test_defaults_are_valid() -> None:
    cfg = PoolConfig()
    assert cfg.strategy == "jump" and cfg.max_batch_size == 1024


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
