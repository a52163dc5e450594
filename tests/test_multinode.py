"""A pool spread over several Ray nodes on this machine."""

from __future__ import annotations

import operator
from collections import Counter
from typing import Any

import pytest
import ray

from shardyard import Shard, ShardPool


class CountKeys(Shard):
    def setup(self, shard_id: int) -> None:
        self.counts: Counter[str] = Counter()

    def process_item(self, key: str) -> str:
        self.counts[key] += 1
        return ray.get_runtime_context().get_node_id()

    def result(self) -> Counter[str]:
        return self.counts


@pytest.mark.parametrize("ray_cluster", [[1, 1, 1]], indirect=True)
def test_actors_on_every_node_and_results_exact(ray_cluster: Any) -> None:
    nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert len(nodes) == 3
    keys = [f"key-{i % 101}" for i in range(6000)]
    with ShardPool(CountKeys, num_actors=3, num_cpus_per_actor=1, num_shards=12) as pool:
        node_of_item = pool.map(keys, keys=keys)
        total = pool.reduce(operator.add)
        stats = pool.stats()
    assert {a.node_id for a in stats.actors} == nodes
    assert set(node_of_item) == nodes  # work really ran on all three nodes
    assert total == Counter(keys)
    # Key affinity across nodes: one node per key.
    per_key: dict[str, set[str]] = {}
    for k, n in zip(keys, node_of_item, strict=True):
        per_key.setdefault(k, set()).add(n)
    assert all(len(v) == 1 for v in per_key.values())
