"""connect(): the embedded local Ray is on loopback with token authentication on."""

from __future__ import annotations

import ipaddress
import threading

import psutil
import pytest
import ray

import shardyard


def _is_loopback(addr: str) -> bool:
    ip = ipaddress.ip_address(addr.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def test_embedded_ray_uses_loopback_node_ip(ray_local: shardyard.ClusterInfo) -> None:
    assert ray_local.embedded
    assert ray_local.node_ip == "127.0.0.1"
    assert ray_local.address.startswith("127.0.0.1:")
    nodes = ray.nodes()
    assert [n["NodeManagerAddress"] for n in nodes if n["Alive"]] == ["127.0.0.1"]


def test_token_authentication_stays_on(ray_local: shardyard.ClusterInfo) -> None:
    from ray._private.authentication.authentication_utils import is_token_auth_enabled

    assert is_token_auth_enabled()


def test_ray_processes_listen_on_loopback_only(ray_local: shardyard.ClusterInfo) -> None:
    # What listens where, measured: every process this embedded Ray started (gcs_server,
    # raylet, agents, workers), and this driver itself.
    with shardyard.ShardPool(abs, num_actors=2) as pool:
        assert pool.map([-1, -2]) == [1, 2]  # workers up
        me = psutil.Process()
        procs = [me, *me.children(recursive=True)]
        names = {p.name() for p in procs}
        assert {"gcs_server", "raylet"} <= names
        listening = {
            (p.name(), c.laddr.ip, c.laddr.port)
            for p in procs
            for c in p.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN
        }
    assert {name for name, _, _ in listening} >= {"gcs_server", "raylet"}
    exposed = [entry for entry in listening if not _is_loopback(entry[1])]
    assert not exposed, exposed


def test_connect_is_idempotent(ray_local: shardyard.ClusterInfo) -> None:
    again = shardyard.connect()
    assert again.address == ray_local.address


def test_cluster_config_rejects_unknown_fields() -> None:
    import pydantic

    with pytest.raises(pydantic.ValidationError) as info:
        shardyard.ClusterConfig(adress="auto")  # type: ignore[call-arg]
    assert info.value.errors()[0]["loc"] == ("adress",)


def test_ray_started_from_a_short_lived_thread_outlives_it(_ray_session: None) -> None:
    # As with `async with ShardPool(...)` as the first use: connect() runs in a worker thread
    # (asyncio.to_thread) that ends right after; Ray's daemons must not die with it.
    shardyard.disconnect()
    starter = threading.Thread(target=shardyard.connect)
    starter.start()
    starter.join()
    assert ray.get(ray.remote(lambda: 41 + 1).remote(), timeout=60) == 42
    assert ray.util.get_node_ip_address() == "127.0.0.1"
