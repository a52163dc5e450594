"""connect(): the embedded local Ray is on loopback with token authentication on."""

from __future__ import annotations

import ipaddress

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


def test_ray_daemons_listen_on_loopback_only(ray_local: shardyard.ClusterInfo) -> None:
    # What listens where, measured: the gcs_server and raylet this process started.
    daemons = [
        p for p in psutil.Process().children(recursive=True) if p.name() in ("gcs_server", "raylet")
    ]
    assert {p.name() for p in daemons} == {"gcs_server", "raylet"}
    listening = [
        c.laddr.ip
        for p in daemons
        for c in p.net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN
    ]
    assert listening
    assert all(_is_loopback(ip) for ip in listening), listening


def test_connect_is_idempotent(ray_local: shardyard.ClusterInfo) -> None:
    again = shardyard.connect()
    assert again.address == ray_local.address


def test_cluster_config_rejects_unknown_fields() -> None:
    import pydantic

    with pytest.raises(pydantic.ValidationError) as info:
        shardyard.ClusterConfig(adress="auto")  # type: ignore[call-arg]
    assert info.value.errors()[0]["loc"] == ("adress",)
