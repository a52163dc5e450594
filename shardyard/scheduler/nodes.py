"""Where shard actors run: each actor gets a node of its own, spread over the cluster.

Ray's ``SPREAD`` strategy is a preference the scheduler may ignore (zero-CPU actors often
land together on one node). Here the pool chooses: every new actor gets the node that
hosts the fewest of the pool's actors among the alive nodes that can hold it (its CPUs and
custom resources fit), and is created with Ray's node affinity on that node, *soft*: if the
node dies, Ray restarts the actor on another node instead of waiting for one that is gone.

:func:`choose_nodes` is the pure choice; :func:`fitting_nodes` reads the cluster.

Example:
    >>> nodes = [NodeSlot("a", "10.0.0.1", 2), NodeSlot("b", "10.0.0.2", 2)]
    >>> choose_nodes(3, nodes, {})
    ['a', 'b', 'a']
    >>> choose_nodes(1, nodes, {"a": 2})
    ['b']
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from shardyard.errors import ConfigError

__all__ = ["NodeSlot", "actor_demand", "affinity", "choose_nodes", "fitting_nodes"]


@dataclass(frozen=True)
class NodeSlot:
    """An alive node that can hold the pool's actors.

    Attributes:
        node_id: Ray's node id (hex).
        ip: its address.
        capacity: how many of the pool's actors its resources hold (``None``: no limit,
            the actors reserve nothing).
    """

    node_id: str
    ip: str
    capacity: int | None


def actor_demand(num_cpus: float | None, resources: dict[str, float]) -> dict[str, float]:
    """What one actor reserves: its CPUs and custom resources (zero amounts dropped)."""
    demand = {k: v for k, v in resources.items() if v > 0}
    if num_cpus:
        demand["CPU"] = num_cpus
    return demand


def fitting_nodes(demand: dict[str, float], nodes: list[dict[str, Any]]) -> list[NodeSlot]:
    """The alive nodes (``ray.nodes()`` entries) whose total resources hold ``demand``.

    Raises:
        ConfigError: no alive node offers a custom resource of ``demand`` at all.
    """
    slots = []
    for n in nodes:
        if not n.get("Alive"):
            continue
        total = n.get("Resources", {})
        fits = [math.floor(total.get(k, 0.0) / v + 1e-9) for k, v in demand.items()]
        if fits and min(fits) < 1:
            continue
        capacity = min(fits, default=None)
        slots.append(NodeSlot(n["NodeID"], n.get("NodeManagerAddress", "?"), capacity))
    missing = [
        k
        for k in demand
        if k != "CPU" and not any(n.get("Alive") and k in n.get("Resources", {}) for n in nodes)
    ]
    if missing:
        raise ConfigError(
            f"no alive node of this cluster offers the resource(s) {missing} that each actor "
            "asks for (resources_per_actor); start nodes with them, e.g. "
            f"`ray start --resources '{{\"{missing[0]}\": 4}}'` or `shardyard cluster up "
            f"--worker-resources '{{\"{missing[0]}\": 4}}'`"
        )
    return slots


def choose_nodes(count: int, nodes: list[NodeSlot], taken: dict[str, int]) -> list[str]:
    """Node ids for ``count`` new actors: each the node with the fewest of the pool's actors
    relative to what it holds, among those with room (all of them once every one is full,
    where Ray queues the actor); ties go to the node listed first.

    Args:
        count: actors to place.
        nodes: the candidates (:func:`fitting_nodes`).
        taken: the pool's actors per node id so far (not changed).
    """
    if not nodes:
        return []
    load = {n.node_id: taken.get(n.node_id, 0) for n in nodes}
    chosen = []
    for _ in range(count):
        roomy = [n for n in nodes if n.capacity is None or load[n.node_id] < n.capacity]
        pool = roomy or nodes
        best = min(pool, key=lambda n: (load[n.node_id] / (n.capacity or 1), load[n.node_id]))
        load[best.node_id] += 1
        chosen.append(best.node_id)
    return chosen


def affinity(node_id: str) -> Any:
    """Ray's soft node affinity to ``node_id`` (a restart after the node is lost goes
    elsewhere)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(node_id=node_id, soft=True)
