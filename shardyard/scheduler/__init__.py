"""The driver side: partitioning, micro-batching, dispatch with backpressure, futures, results.

Example:
    >>> from shardyard.scheduler import ShardPool, ShardFuture
    >>> ShardFuture().done()
    False
"""

from shardyard.scheduler.futures import ShardFuture
from shardyard.scheduler.pool import ShardPool
from shardyard.scheduler.stats import (
    ActorStats,
    PlacementChange,
    PoolStats,
    ScaleReport,
    ShardStats,
)

__all__ = [
    "ActorStats",
    "PlacementChange",
    "PoolStats",
    "ScaleReport",
    "ShardFuture",
    "ShardPool",
    "ShardStats",
]
