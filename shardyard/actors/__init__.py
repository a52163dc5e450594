"""Shard actors: the async Ray actor hosting shards, and the user-facing ``Shard`` base class.

Example:
    >>> from shardyard.actors import Shard
    >>> issubclass(Shard, object)
    True
"""

from shardyard.actors.shard import Shard
from shardyard.actors.shard_actor import ShardActor, remote_shard_actor

__all__ = ["Shard", "ShardActor", "remote_shard_actor"]
