"""shardyard: Akka-style keyed sharding on Ray, with Ray-native speed and a Python API.

Keys route to logical shards (a pluggable strategy), shards live on async Ray actors, and a
driver-side scheduler micro-batches items to them and hands back futures and results.

Large read-only data every shard reads goes into Ray's object store once, with
``ShardPool(fn, shared={"table": table})``; the handler reads ``shardyard.shared["table"]``
(numpy arrays zero-copy). On the driver, ``shardyard.shared`` raises ``RuntimeError``.

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

from shardyard.actor_pool import ActorPool
from shardyard.actors import Shard
from shardyard.actors.shared import shared
from shardyard.cluster import ClusterInfo, connect, disconnect
from shardyard.config import AutoscaleConfig, ClusterConfig, PoolConfig
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
