"""Which node each new actor gets (pure: no Ray)."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardyard.errors import ConfigError
from shardyard.scheduler.nodes import NodeSlot, actor_demand, choose_nodes, fitting_nodes


def _node(nid: str, cpus: float, alive: bool = True, **custom: float) -> dict[str, object]:
    return {
        "NodeID": nid,
        "NodeManagerAddress": f"10.0.0.{len(nid)}",
        "Alive": alive,
        "Resources": {"CPU": cpus, **custom},
    }


def test_nodes_that_cannot_hold_an_actor_are_left_out() -> None:
    nodes = [_node("a", 4), _node("b", 1), _node("c", 8, alive=False), _node("dd", 2, ingest=3)]
    assert [(n.node_id, n.capacity) for n in fitting_nodes(actor_demand(2, {}), nodes)] == [
        ("a", 2),
        ("dd", 1),
    ]
    assert [n.node_id for n in fitting_nodes(actor_demand(None, {"ingest": 1}), nodes)] == ["dd"]
    unlimited = fitting_nodes(actor_demand(None, {}), nodes)
    assert [n.capacity for n in unlimited] == [None, None, None]


def test_a_resource_no_node_offers_names_it() -> None:
    with pytest.raises(ConfigError, match="'gpu-a100'"):
        fitting_nodes(actor_demand(None, {"gpu-a100": 1}), [_node("a", 4)])


def test_new_actors_go_where_the_pool_has_fewest() -> None:
    nodes = [NodeSlot("a", "", None), NodeSlot("b", "", None), NodeSlot("c", "", None)]
    assert choose_nodes(2, nodes, {"a": 3, "b": 1}) == ["c", "b"]


def test_full_nodes_are_skipped_until_all_are_full() -> None:
    nodes = [NodeSlot("big", "", 4), NodeSlot("small", "", 1)]
    assert Counter(choose_nodes(5, nodes, {})) == {"big": 4, "small": 1}
    assert len(choose_nodes(7, nodes, {})) == 7  # beyond room: Ray queues them


@given(
    st.lists(st.integers(1, 6), min_size=1, max_size=6),
    st.integers(0, 40),
)
def test_spread_is_even_relative_to_capacity(capacities: list[int], count: int) -> None:
    nodes = [NodeSlot(f"n{i}", "", c) for i, c in enumerate(capacities)]
    chosen = Counter(choose_nodes(count, nodes, {}))
    assert sum(chosen.values()) == count
    room = sum(capacities)
    if count <= room:
        assert all(chosen[n.node_id] <= (n.capacity or 0) for n in nodes)
    if count >= len(nodes) and count <= room:
        # Filling by relative load: no node is emptier (relative to what it holds) than
        # another by more than one actor's worth.
        ratios = [chosen[n.node_id] / (n.capacity or 1) for n in nodes]
        assert max(ratios) - min(ratios) <= 1.0 + 1e-9
