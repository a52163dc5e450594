"""Shared fixtures: one embedded local Ray for the session, and a multi-node cluster.

``ray_local`` connects the embedded local Ray once and keeps it for every test that asks
for it; ``ray_cluster`` (a ``ray.cluster_utils.Cluster`` of several nodes on this machine)
disconnects the shared Ray first and stops its own nodes afterwards, so the next
``ray_local`` test reconnects. Everything started here is stopped here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
import ray

import shardyard


@pytest.fixture(autouse=True)
def _pickle_test_module_by_value(request: pytest.FixtureRequest) -> None:
    # Test modules are not importable in Ray's worker processes (pytest puts tests/ on the
    # driver's sys.path only), so handlers defined in them travel by value.
    from ray import cloudpickle

    module = request.module
    if module.__name__ not in cloudpickle.list_registry_pickle_by_value():
        cloudpickle.register_pickle_by_value(module)


@contextlib.contextmanager
def _local_ray() -> Iterator[shardyard.ClusterInfo]:
    info = shardyard.connect()
    yield info


@pytest.fixture(scope="session")
def _ray_session() -> Iterator[None]:
    yield
    shardyard.disconnect()


@pytest.fixture
def ray_local(_ray_session: None) -> Iterator[shardyard.ClusterInfo]:
    """An embedded local Ray (node IP 127.0.0.1), shared across tests."""
    with _local_ray() as info:
        yield info


@pytest.fixture
def ray_cluster(request: pytest.FixtureRequest, _ray_session: None) -> Iterator[Any]:
    """A multi-node Ray cluster on this machine; ``request.param`` = CPUs per node."""
    from ray.cluster_utils import Cluster

    from shardyard.cluster.connection import _loopback_node_ip

    cpus = getattr(request, "param", [1, 1])
    shardyard.disconnect()
    # Every node on loopback, like the embedded Ray.
    with _loopback_node_ip():
        cluster = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": cpus[0],
                "include_dashboard": False,
                "node_ip_address": "127.0.0.1",
            },
        )
        try:
            for n in cpus[1:]:
                cluster.add_node(num_cpus=n, node_ip_address="127.0.0.1")
            cluster.wait_for_nodes()
            ray.init(address=cluster.address, logging_level="WARNING")
            yield cluster
        finally:
            ray.shutdown()
            cluster.shutdown()
