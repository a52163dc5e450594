"""A pool spread over several Ray nodes on this machine."""

from __future__ import annotations

import concurrent.futures
import contextlib
import operator
import os
import signal
import time
from collections import Counter
from typing import Any

import pytest
import ray

from shardyard import ActorLostError, ConfigError, Shard, ShardPool


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


class Count(Shard):
    def setup(self, shard_id: int) -> None:
        self.counts: Counter[int] = Counter()

    def process(self, batch: Any) -> list[str]:
        for x in batch:
            self.counts[x % 1000] += 1
        return [ray.get_runtime_context().get_node_id()] * len(batch)

    def result(self) -> Counter[int]:
        return self.counts


def _lose_node(cluster: Any, actor: Any) -> None:
    """A node crash: its raylet and every process on it (the actor's included) die."""
    cluster.remove_node(_worker_node_of(cluster, actor.node_id), False)
    with contextlib.suppress(ProcessLookupError):
        os.kill(actor.pid, signal.SIGKILL)


def _worker_node_of(cluster: Any, node_id: str) -> Any:
    for node in cluster.list_all_nodes():
        if node.node_id == node_id and not node.head:
            return node
    return None


@pytest.mark.parametrize("ray_cluster", [[2, 1]], indirect=True)
def test_a_lost_node_under_cpu_reserving_actors_is_recovered(ray_cluster: Any) -> None:
    items = list(range(20_000))
    with ShardPool(
        Count, num_actors=2, num_shards=8, num_cpus_per_actor=1, spread=True, checkpoint_every=4
    ) as pool:
        nodes = pool.map(items, keys=items)
        pool.results()  # snapshots committed
        victims = [a for a in pool.stats().actors if _worker_node_of(ray_cluster, a.node_id)]
        assert victims, "no actor was placed on the worker node"
        _lose_node(ray_cluster, victims[0])
        more = list(range(20_000, 30_000))
        after = pool.map(more, keys=more)
        assert pool.reduce(operator.add) == Counter(x % 1000 for x in items + more)
        stats = pool.stats()
    assert len(set(nodes)) == 2
    head = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert set(after) <= head and {a.node_id for a in stats.actors} <= head
    # Recovered either way: Ray restarted the actor on the head, or (not within
    # failover_after_s) its shards moved to the surviving actor.
    failovers = [c for c in stats.placement_history if c.reason == "failover"]
    assert sum(a.restarts for a in stats.actors) >= 1 or failovers


@pytest.mark.parametrize("ray_cluster", [[1, 1]], indirect=True)
def test_a_lost_node_with_no_room_left_moves_its_shards_to_the_survivors(ray_cluster: Any) -> None:
    # Each actor reserves the only CPU of its node: the lost actor cannot restart anywhere.
    # After failover_after_s its shards are restored on the surviving actor from their
    # snapshots (held by the driver, not on the lost node) and replayed: nothing is lost.
    items = list(range(6_000))
    with ShardPool(
        Count, num_actors=2, num_shards=8, num_cpus_per_actor=1, failover_after_s=1.0
    ) as pool:
        pool.map(items, keys=items)
        victim = next(
            a for a in pool.stats().actors if _worker_node_of(ray_cluster, a.node_id) is not None
        )
        _lose_node(ray_cluster, victim)
        start = time.monotonic()
        out = pool.map(items, keys=items)
        took = time.monotonic() - start
        total = pool.reduce(operator.add)
        stats = pool.stats()
    print(f"recovered from the lost node in {took:.1f} s")
    assert total == Counter(x % 1000 for x in items + items)
    assert len(out) == len(items)
    assert stats.num_actors == 1
    assert [a.actor for a in stats.actors] != [victim.actor]
    moved = [c for c in stats.placement_history if c.reason == "failover"]
    assert sorted(c.shard_id for c in moved) == sorted(victim.shards)
    assert all(c.from_actor == victim.actor for c in moved)


@pytest.mark.parametrize("ray_cluster", [[1, 1]], indirect=True)
def test_a_lost_node_with_no_room_and_no_failover_fails_its_items_clearly(
    ray_cluster: Any,
) -> None:
    items = list(range(4_000))
    with ShardPool(
        Count,
        num_actors=2,
        num_shards=4,
        num_cpus_per_actor=1,
        restart_timeout_s=5,
        failover_after_s=None,
    ) as pool:
        pool.map(items, keys=items)
        victim = next(
            a for a in pool.stats().actors if _worker_node_of(ray_cluster, a.node_id) is not None
        )
        _lose_node(ray_cluster, victim)
        start = time.monotonic()
        out = pool.map(items, keys=items, return_exceptions=True)
        took = time.monotonic() - start
        lost = [o for o in out if isinstance(o, ActorLostError)]
        assert lost and "did not come back within 5 s" in str(lost[0])
        assert len(lost) + sum(isinstance(o, str) for o in out) == len(items)
        victim_shards = set(victim.shards)
        assert {pool.shard_of([x])[0] for x, o in zip(items, out, strict=True)
                if isinstance(o, ActorLostError)} <= victim_shards  # fmt: skip
    assert took < 120


@pytest.mark.parametrize("ray_cluster", [[1, 1, 1]], indirect=True)
def test_zero_cpu_actors_are_spread_evenly_over_the_nodes(ray_cluster: Any) -> None:
    # Ray's own scheduler packs zero-CPU actors onto few nodes; the pool gives each a node.
    nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    with ShardPool(abs, num_actors=6, num_shards=12) as pool:
        pool.map(range(-100, 0))
        per_node = Counter(a.node_id for a in pool.stats().actors)
        ips = {a.node_ip for a in pool.stats().actors}
    assert sorted(per_node.values()) == [2, 2, 2] and set(per_node) == set(nodes)
    assert ips == {"127.0.0.1"}


@pytest.mark.parametrize("ray_cluster", [[1, 1, 1]], indirect=True)
def test_a_pool_pinned_by_a_custom_resource_runs_only_on_those_nodes(ray_cluster: Any) -> None:
    pinned = ray_cluster.add_node(num_cpus=1, resources={"ingest": 4}, node_ip_address="127.0.0.1")
    ray_cluster.wait_for_nodes()
    with ShardPool(abs, num_actors=3, num_shards=6, resources_per_actor={"ingest": 1}) as pool:
        pool.map(range(-50, 0))
        where = {a.node_id for a in pool.stats().actors}
    assert where == {pinned.node_id}


@pytest.mark.parametrize("ray_cluster", [[1]], indirect=True)
def test_a_resource_no_node_offers_is_a_clear_error(ray_cluster: Any) -> None:
    with pytest.raises(ConfigError, match=r"no alive node .* offers the resource.*'gpu-a100'"):
        ShardPool(abs, num_actors=1, resources_per_actor={"gpu-a100": 1}).start()


class SlowHandoff(Shard):
    """Counts per key; its snapshot takes a while when a marker file exists (a slow move)."""

    marker = ""

    def setup(self, shard_id: int) -> None:
        self.counts: Counter[int] = Counter()

    def process_item(self, x: int) -> int:
        self.counts[x % 100] += 1
        return self.counts[x % 100]

    def snapshot(self) -> Any:
        if self.marker and os.path.exists(self.marker):
            time.sleep(6)
        return dict(self.counts)

    def restore(self, state: Any) -> None:
        self.counts = Counter(state)

    def result(self) -> Counter[int]:
        return self.counts


@pytest.mark.parametrize("ray_cluster", [[1, 1, 1]], indirect=True)
def test_a_failover_during_a_scale_in_never_lands_on_the_retiring_actor(
    ray_cluster: Any, tmp_path: Any
) -> None:
    # One actor per node, no room anywhere: a lost actor fails over. scale(2) retires the
    # newest actor (2) with slow handoffs; meanwhile actor 0's or 1's node dies. Its shards
    # must go to the other one, not to actor 2 that the scale is emptying.
    handler = type("SlowHandoffHere", (SlowHandoff,), {"marker": str(tmp_path / "slow")})
    items = list(range(3_000))
    with ShardPool(
        handler, num_actors=3, num_shards=6, num_cpus_per_actor=1, failover_after_s=1.0
    ) as pool:
        keys = [x % 100 for x in items]  # routed and counted by the same key
        first = pool.map(items, keys=keys)
        actors = {a.actor: a for a in pool.stats().actors}
        # The victim: actor 0 or 1 (not 2, which the scale retires), on a worker node.
        victim = next(a for a in (0, 1) if _worker_node_of(ray_cluster, actors[a].node_id))
        heir = 1 - victim
        (tmp_path / "slow").touch()
        scaling = concurrent.futures.ThreadPoolExecutor(1).submit(pool.scale, 2)
        time.sleep(1.0)  # the scale is waiting on a slow handoff now
        _lose_node(ray_cluster, actors[victim])
        report = scaling.result(timeout=120)
        (tmp_path / "slow").unlink()
        second = pool.map(items, keys=keys)
        total = pool.reduce(operator.add)
        stats = pool.stats()
        again = pool.scale(1)
    assert report.retired_actors == [2]
    failovers = [c for c in stats.placement_history if c.reason == "failover"]
    assert failovers and {c.to_actor for c in failovers} == {heir}
    assert [a.actor for a in stats.actors] == [heir]
    assert total == Counter(x % 100 for x in items + items)
    serial: Counter[int] = Counter()
    expected = []
    for x in items + items:
        serial[x % 100] += 1
        expected.append(serial[x % 100])
    assert first + second == expected  # nothing lost, doubled or reordered
    assert again.num_actors == 1
