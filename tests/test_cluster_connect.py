"""connect(): tokens from Ray's own settings, quick clear refusals, no silent reuse."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

import shardyard
from shardyard import ClusterConnectionError
from shardyard.cluster import auth
from shardyard.cluster.preflight import split_host_port


def test_a_token_file_is_written_private_and_fresh(tmp_path: Path) -> None:
    first = Path(auth.write_token_file(tmp_path / "t" / "auth_token"))
    token = first.read_text()
    assert stat.S_IMODE(first.stat().st_mode) == 0o600
    assert len(token) == 64 and int(token, 16) >= 0  # 256 bits, hex, as Ray makes them
    assert Path(auth.write_token_file(first)).read_text() != token


def test_the_token_is_found_where_ray_looks_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    for var in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)
    assert auth.find_token() is None
    default = tmp_path / ".ray" / "auth_token"
    default.parent.mkdir()
    default.write_text("abc")
    assert auth.find_token() == auth.TokenSource(str(default))
    named = tmp_path / "mine"
    named.write_text("def")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(named))
    assert auth.find_token() == auth.TokenSource(str(named))
    monkeypatch.setenv("RAY_AUTH_TOKEN", "ghi")
    assert auth.find_token() == auth.TokenSource("RAY_AUTH_TOKEN")


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("10.0.0.5:6379", ("10.0.0.5", 6379)),
        ("ray://head:10001", ("head", 10001)),
        ("ray://head", ("head", 10001)),
        ("[::1]:6380", ("::1", 6380)),
        ("head", ("head", 6379)),
    ],
)
def test_addresses_split_into_host_and_port(address: str, expected: tuple[str, int]) -> None:
    default = 10001 if address.startswith("ray://") else 6379
    assert split_host_port(address, default) == expected


_CONNECT = textwrap.dedent(
    """
    import json, sys, time
    import shardyard
    t = time.monotonic()
    try:
        shardyard.connect(sys.argv[1])
        print(json.dumps({"connected": True}))
    except shardyard.ClusterConnectionError as exc:
        print(json.dumps({"reason": exc.reason, "message": str(exc),
                          "seconds": time.monotonic() - t}))
    """
)


@pytest.mark.parametrize("address", ["127.0.0.1:1", "ray://127.0.0.1:1", "auto"])
def test_nothing_listening_is_a_clear_error_within_seconds(address: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["TMPDIR"] = str(tmp_path)  # "auto" looks for a cluster started on this machine
    done = subprocess.run(
        [sys.executable, "-c", _CONNECT, address],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["reason"] == "unreachable", result
    assert result["seconds"] < 15
    if address != "auto":
        assert f"nothing answers at {address}" in result["message"]


def test_an_address_other_than_the_connected_cluster_is_refused(
    ray_local: shardyard.ClusterInfo,
) -> None:
    start = time.monotonic()
    with pytest.raises(ClusterConnectionError, match="already connected to the Ray cluster at"):
        shardyard.connect("10.255.255.1:6379")
    with pytest.raises(ClusterConnectionError) as err:
        shardyard.ShardPool(abs, address="10.255.255.1:6379").start()
    assert err.value.reason == "mismatch"
    assert time.monotonic() - start < 5
    # The cluster it is connected to, by its own address: reused.
    assert shardyard.connect(ray_local.address).address == ray_local.address
    with shardyard.ShardPool(abs, address=ray_local.address, num_actors=1) as pool:
        assert pool.map([-3]) == [3]


def _pid(_: object) -> int:
    return os.getpid()


def _idle_workers(raylet: Any) -> set[int]:
    """The raylet's worker processes that hold no task or actor (Ray titles them so)."""
    out = set()
    for child in raylet.children():
        try:
            if child.cmdline()[:1] == ["ray::IDLE"]:
                out.add(child.pid)
        except Exception:  # gone meanwhile
            pass
    return out


def test_a_closed_pools_worker_processes_are_started_again_for_the_next_pool(
    ray_local: shardyard.ClusterInfo,
) -> None:
    # Each actor's process dies with it; on the embedded Ray, a pool's close has the raylet
    # start as many idle workers again (shardyard.cluster.warm), which the next pool's
    # actors take: processes that were idle before that pool was asked for.
    import psutil

    from shardyard import ShardPool
    from shardyard.cluster import connection

    assert ray_local.embedded and connection.embedded()
    for _attempt in range(5):  # a worker still starting when the pool asks is not taken
        first = ShardPool(_pid, num_actors=2)
        raylet = psutil.Process(first.map([0])[0]).parent()
        before = _idle_workers(raylet)
        first.close()
        deadline = time.monotonic() + 60  # a guard against a hang, not a timing bar
        while len(_idle_workers(raylet) - before) < 2:
            assert time.monotonic() < deadline, "no worker process was started after the close"
            time.sleep(0.2)
        time.sleep(2)  # registered with the raylet (titled IDLE once it has connected)
        idle = _idle_workers(raylet)
        with ShardPool(_pid, num_actors=2) as second:
            pids = set(second.map(range(64)))
        if pids <= idle:
            break
    else:
        pytest.fail(f"the next pool's actors ran in new processes {pids}, not in {idle}")
