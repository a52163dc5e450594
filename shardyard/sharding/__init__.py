"""Key -> shard strategies, stable hashing, keyless balancing and shard -> actor placement.

Pure numpy, no Ray: everything here is testable in milliseconds and runs the same in every
process. The two levels of routing are:

1. key -> shard: a :class:`ShardingStrategy` built by name with :func:`strategy` (``"hash"``,
   ``"jump"``, ``"ring"``, ``"rendezvous"``, ``"range"``, ``"bounded"``), on top of
   :func:`stable_hash`; keyless work is spread by a :class:`Balancer` (:func:`balancer`).
2. shard -> actor: :func:`place` and :func:`rebalance` (fewest moves, balanced within one).

Example:
    >>> from shardyard.sharding import place, rebalance, strategy
    >>> s = strategy("jump", 8)
    >>> shard_ids = s.assign(["alice", "bob", 42])
    >>> table = place(8, ["actor-0", "actor-1"])
    >>> owners = [table[int(i)] for i in shard_ids]
    >>> len(rebalance(table, ["actor-0", "actor-1", "actor-2"]))
    8
"""

from __future__ import annotations

from shardyard.sharding.balancing import (
    Balancer,
    LeastLoaded,
    PowerOfTwoChoices,
    RoundRobin,
    available_balancers,
    balancer,
)
from shardyard.sharding.base import ShardingStrategy
from shardyard.sharding.bounded import BoundedStrategy
from shardyard.sharding.hashing import stable_hash, stable_hash_one
from shardyard.sharding.jump import JumpStrategy
from shardyard.sharding.modulo import HashStrategy
from shardyard.sharding.placement import moved_shards, place, rebalance, shard_counts
from shardyard.sharding.ranges import RangeStrategy
from shardyard.sharding.registry import (
    affinity_strategies,
    available_strategies,
    register_strategy,
    strategy,
    unregister_strategy,
)
from shardyard.sharding.rendezvous import RendezvousStrategy
from shardyard.sharding.ring import RingStrategy

__all__ = [
    "Balancer",
    "BoundedStrategy",
    "HashStrategy",
    "JumpStrategy",
    "LeastLoaded",
    "PowerOfTwoChoices",
    "RangeStrategy",
    "RendezvousStrategy",
    "RingStrategy",
    "RoundRobin",
    "ShardingStrategy",
    "affinity_strategies",
    "available_balancers",
    "available_strategies",
    "balancer",
    "moved_shards",
    "place",
    "rebalance",
    "register_strategy",
    "shard_counts",
    "stable_hash",
    "stable_hash_one",
    "strategy",
    "unregister_strategy",
]
