"""shardyard: Akka-style keyed sharding on Ray, with Ray-native speed and a Python API.

Keys route to logical shards (a pluggable strategy), shards live on async Ray actors, and a
driver-side scheduler micro-batches items to them and hands back futures and results.

Large read-only data every shard reads goes into Ray's object store once, with
``ShardPool(fn, shared={"table": table})``; the handler reads ``shardyard.shared["table"]``
(numpy arrays zero-copy). On the driver, ``shardyard.shared`` raises ``RuntimeError``.

The public names load on first use (PEP 562), so a Ray worker that imports only the shard
actor (``shardyard.actors.shard_actor``) does not pay for the scheduler, the config models
(pydantic) or the sharding strategies (numpy, xxhash).

Example:
    >>> import shardyard
    >>> shardyard.stable_hash([1, 2]).dtype
    dtype('uint64')
    >>> try:
    ...     shardyard.shared["table"]  # in a handler: the pool's value
    ... except RuntimeError:
    ...     print("not on the driver")
    not on the driver
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from shardyard.errors import (
    ActorLostError,
    ClusterConnectionError,
    ConfigError,
    InputError,
    PoisonItemError,
    PoolClosedError,
    SerializationError,
    ShardFailedError,
    ShardyardError,
    SourceError,
    StartTimeoutError,
    TaskError,
    UnknownStrategyError,
    UnsupportedKeyError,
)

if TYPE_CHECKING:
    from shardyard.actor_pool import ActorPool
    from shardyard.actors.shard import Shard
    from shardyard.actors.shared import shared
    from shardyard.cluster import ClusterInfo, connect, disconnect
    from shardyard.config import AutoscaleConfig, ClusterConfig, PoolConfig
    from shardyard.executor import Executor
    from shardyard.scheduler import (
        ActorStats,
        PlacementChange,
        PoolStats,
        ScaleReport,
        ShardFuture,
        ShardPool,
        ShardStats,
    )
    from shardyard.scheduler.lifecycle import close_all
    from shardyard.sharding import place, rebalance, stable_hash, strategy

__version__ = "0.1.0"

__all__ = [
    "ActorLostError",
    "ActorPool",
    "ActorStats",
    "AutoscaleConfig",
    "ClusterConfig",
    "ClusterConnectionError",
    "ClusterInfo",
    "ConfigError",
    "Executor",
    "InputError",
    "PlacementChange",
    "PoisonItemError",
    "PoolClosedError",
    "PoolConfig",
    "PoolStats",
    "ScaleReport",
    "SerializationError",
    "Shard",
    "ShardFailedError",
    "ShardFuture",
    "ShardPool",
    "ShardStats",
    "ShardyardError",
    "SourceError",
    "StartTimeoutError",
    "TaskError",
    "UnknownStrategyError",
    "UnsupportedKeyError",
    "__version__",
    "close_all",
    "connect",
    "disconnect",
    "place",
    "rebalance",
    "shared",
    "stable_hash",
    "strategy",
]

# Public name -> the module it lives in; imported on first access (see __getattr__). The
# errors are light (no imports) and loaded at once.
_SOURCES: dict[str, str] = {
    "ActorPool": "shardyard.actor_pool",
    "Shard": "shardyard.actors.shard",
    "shared": "shardyard.actors.shared",
    "ClusterInfo": "shardyard.cluster",
    "connect": "shardyard.cluster",
    "disconnect": "shardyard.cluster",
    "AutoscaleConfig": "shardyard.config",
    "ClusterConfig": "shardyard.config",
    "PoolConfig": "shardyard.config",
    "Executor": "shardyard.executor",
    "close_all": "shardyard.scheduler.lifecycle",
    **dict.fromkeys(
        [
            "ActorStats",
            "PlacementChange",
            "PoolStats",
            "ScaleReport",
            "ShardFuture",
            "ShardPool",
            "ShardStats",
        ],
        "shardyard.scheduler",
    ),
    **dict.fromkeys(["place", "rebalance", "stable_hash", "strategy"], "shardyard.sharding"),
}


if not TYPE_CHECKING:  # mypy sees the imports above; a typo must stay an error for it

    def __getattr__(name: str) -> Any:
        """Load public ``name`` from its module on first access, then keep it here."""
        source = _SOURCES.get(name)
        if source is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(source), name)
        globals()[name] = value  # later lookups skip __getattr__
        return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
