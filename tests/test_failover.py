"""A live actor that is slow to answer is never failed over (only Ray's word of a death is)."""

from __future__ import annotations

import time

import shardyard
from shardyard import ShardPool


def _hold_the_gil(x: int) -> int:
    if x == 7:
        # A C loop that never lets go of the GIL: this actor's health checks go unanswered
        # for seconds, far longer than failover_after_s.
        sum(range(60_000_000))
    return x * 2


def test_an_actor_busy_in_a_gil_holding_call_is_not_failed_over(
    ray_local: shardyard.ClusterInfo,
) -> None:
    with ShardPool(
        _hold_the_gil,
        num_actors=2,
        num_shards=4,
        max_batch_size=1,
        failover_after_s=1.0,
        health_check_interval_s=0.1,
    ) as pool:
        start = time.monotonic()
        out = pool.map(range(40))
        took = time.monotonic() - start
        stats = pool.stats()
    print(f"the GIL-holding item took the map to {took:.1f} s")
    assert out == [2 * x for x in range(40)]
    assert stats.num_actors == 2
    assert not [c for c in stats.placement_history if c.reason == "failover"]
    assert sum(a.restarts for a in stats.actors) == 0
