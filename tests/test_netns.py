"""A Ray head and a Ray worker as two hosts (Linux network namespaces); the link is cut mid-run.

Topology (built by ``tests/netns_hosts.py``; <id> is random per run, <x> in 1..254)::

    namespace syh-<id>  "head host"                namespace syw-<id>  "worker host"
    lo, vh<id> 10.251.<x>.1/24  <------ veth ------>  vw<id> 10.251.<x>.2/24, lo
    ray start --head --num-cpus 2 (GCS :6379)        ray start --address 10.251.<x>.1:6379
    driver.py (shardyard.connect, ShardPool)          --num-cpus 1

Every Ray process and the driver run inside the namespaces through ``ip netns exec``, with
Ray's token authentication on (``RAY_AUTH_MODE=token``, a 0600 token file) and, on every
process, fast node-death detection (GCS health checks every 0.5 s, 0.5 s timeout, 4
misses). Each node has its own ``--temp-dir`` under a short directory in /tmp (Unix socket
paths must stay below 108 bytes); the logs are copied to pytest's ``tmp_path`` at the end.

The driver runs a keyed stateful count (``CountKeys``) over 40 000 keys in chunks with one
CPU-reserving actor on each host (``spread=True``); when half the items are done it says
so, the test sets the worker's veth down (a pulled cable: packets vanish, no RST), and the
driver must still end with the exact ``Counter``: nothing lost, nothing counted twice.

Skipped where namespaces cannot be built: not root, no ``ip`` binary, ``ip netns add``
refused. Teardown always kills every process inside both namespaces (``ip netns pids``),
deletes the veth pair and the namespaces, and checks that nothing of it survives.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from netns_hosts import NetnsUnavailableError, TwoHosts, unsupported_reason

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
GCS_PORT = 6379
N_ITEMS = 40_000
DRIVER_TIMEOUT_S = 240.0
START_TIMEOUT_S = 45.0

# Fast node-death detection (RayConfig names checked in Ray 2.60's _raylet.so).
HEALTH_ENV = {
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_timeout_ms": "500",
    "RAY_health_check_failure_threshold": "4",
}

DRIVER = r'''
"""Run in the head namespace: a keyed stateful count while the test cuts the link."""
import json, os, sys, threading, time, traceback
from collections import Counter

import ray

import shardyard
from shardyard import Shard, ShardPool

N = int(os.environ["NETNS_N_ITEMS"])
CHUNK = 1000


def say(tag, **fields):
    print(f"@@ {tag} " + json.dumps({"t": time.time(), **fields}, default=str), flush=True)


class CountKeys(Shard):
    def setup(self, shard_id):
        self.counts = Counter()

    def process_item(self, key):
        self.counts[key] += 1
        time.sleep(0.0005)
        return None

    def result(self):
        return self.counts


def watch_nodes(stop):
    """Report when a node stops being alive in the GCS's view."""
    seen_dead = set()
    while not stop.is_set():
        try:
            for n in ray.nodes():
                if not n["Alive"] and n["NodeID"] not in seen_dead:
                    seen_dead.add(n["NodeID"])
                    say("NODE_DEAD", ip=n["NodeManagerAddress"])
        except Exception as exc:
            say("WATCH_ERROR", error=repr(exc))
        stop.wait(0.2)


def main():
    info = shardyard.connect(os.environ["RAY_ADDRESS"])
    deadline = time.monotonic() + 60
    while len([n for n in ray.nodes() if n["Alive"]]) < 2:
        if time.monotonic() > deadline:
            say("ERROR", error="the worker node never joined", nodes=ray.nodes())
            return 3
        time.sleep(0.2)
    ip_of = {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes()}
    say("CONNECTED", node_ip=info.node_ip, nodes=sorted(ip_of.values()))
    stop = threading.Event()
    threading.Thread(target=watch_nodes, args=(stop,), daemon=True).start()
    keys = [f"k{i % 997}" for i in range(N)]
    with ShardPool(
        CountKeys,
        num_actors=2,
        num_cpus_per_actor=1,
        num_shards=16,
        spread=True,
        checkpoint_every=8,
        restart_timeout_s=60,
    ) as pool:
        pool.start()
        stats = pool.stats()
        say("PLACED", hosts={a.actor: ip_of.get(a.node_id) for a in stats.actors},
            shards={a.actor: a.shards for a in stats.actors})
        for start in range(0, N, CHUNK):
            part = keys[start : start + CHUNK]
            pool.map(part, keys=part, timeout=150)
            say("CHUNK", done=start + len(part))
            if start + len(part) == N // 2:
                say("HALF")
        total = pool.reduce(lambda a, b: a + b, timeout=150)
        expected = Counter(keys)
        say(
            "RESULT",
            exact=total == expected,
            n=sum(total.values()),
            missing=sum((expected - total).values()),
            extra=sum((total - expected).values()),
        )
        stats = pool.stats()
        ip_of = {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes()}
        say(
            "STATS",
            actors=[
                {"actor": a.actor, "host": ip_of.get(a.node_id), "state": a.state,
                 "restarts": a.restarts, "shards": a.shards}
                for a in stats.actors
            ],
            replayed=sum(s.replayed_batches for s in stats.shards),
            alive=sorted(n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]),
        )
    stop.set()
    say("END")
    return 0


if __name__ == "__main__":
    try:
        rc = main()
    except BaseException as exc:
        traceback.print_exc()
        say("ERROR", error=repr(exc), type=type(exc).__name__)
        rc = 1
    sys.stdout.flush()
    os._exit(rc)
'''


# --- helpers ---------------------------------------------------------------------------------


def _events(log: Path) -> list[tuple[str, dict[str, Any]]]:
    """The ``@@ TAG {json}`` lines the driver printed so far."""
    out = []
    if not log.exists():
        return out
    for line in log.read_text(errors="replace").splitlines():
        m = re.match(r"^@@ (\w+) (\{.*\})\s*$", line)
        if m:
            with contextlib.suppress(json.JSONDecodeError):
                out.append((m.group(1), json.loads(m.group(2))))
    return out


def _first(events: list[tuple[str, dict[str, Any]]], tag: str) -> dict[str, Any] | None:
    return next((e for t, e in events if t == tag), None)


def _tail(path: Path, lines: int = 40, pattern: str | None = None) -> str:
    if not path.exists():
        return f"<{path} missing>"
    text = path.read_text(errors="replace").splitlines()
    if pattern is not None:
        text = [t for t in text if re.search(pattern, t, re.IGNORECASE)]
    return "\n".join(text[-lines:])


def _wait_for(
    cond: Callable[[], bool], timeout: float, what: str, alive: Callable[[], str | None]
) -> None:
    """Poll ``cond`` until true; fail on timeout or when ``alive`` names a dead process."""
    deadline = time.monotonic() + timeout
    while not cond():
        dead = alive()
        if dead:
            pytest.fail(f"waiting for {what}: {dead}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout:g} s")
        time.sleep(0.05)


class Run:
    """The namespaces, the short temp root and the logs of one test run."""

    def __init__(self, hosts: TwoHosts, root: Path) -> None:
        self.hosts = hosts
        self.root = root
        self.token = root / "token"
        self.token.write_text(secrets.token_hex(32))
        self.token.chmod(0o600)

    def env(self) -> dict[str, str]:
        """The environment of every Ray process and of the driver."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.update(HEALTH_ENV)
        env.update(
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN_PATH=str(self.token),
            RAY_USAGE_STATS_ENABLED="0",
            RAY_ADDRESS=f"{self.hosts.head.ip}:{GCS_PORT}",
            PYTHONPATH=os.pathsep.join(
                p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p
            ),
            PYTHONUNBUFFERED="1",
        )
        return env

    def ray_logs(self) -> list[Path]:
        return sorted(self.root.glob("*/session_*/logs"))

    def log_report(self) -> str:
        """Tails of the driver output and the interesting Ray log lines, for a failure."""
        parts = [f"--- driver.log ---\n{_tail(self.root / 'driver.log', 80)}"]
        for name in ("head.log", "worker.log"):
            parts.append(f"--- {name} ---\n{_tail(self.root / name, 20)}")
        for logs in self.ray_logs():
            node = logs.parents[1].name
            for name, pattern in (
                ("gcs_server.out", r"dead|health|unhealthy|restart|fail|error"),
                ("raylet.out", r"dead|restart|fail|error|disconnect"),
            ):
                path = logs / name
                if path.exists():
                    parts.append(f"--- {node}/{name} ---\n{_tail(path, 25, pattern)}")
        return "\n".join(parts)


@pytest.fixture
def netns_run(tmp_path: Path) -> Iterator[Run]:
    reason = unsupported_reason()
    if reason is not None:
        pytest.skip(reason)
    hosts = TwoHosts()
    root = Path(tempfile.mkdtemp(prefix="syn", dir="/tmp"))  # short: socket paths < 108
    try:
        try:
            hosts.create()
        except NetnsUnavailableError as exc:
            pytest.skip(f"network namespaces are not available here: {exc}")
        yield Run(hosts, root)
    finally:
        started = set()
        for host in (hosts.head, hosts.worker):
            started.update(hosts.pids(host))
        started.update(p.pid for p, _ in hosts._procs)
        problems = hosts.teardown()
        for logs in sorted(root.glob("*/session_*/logs")):
            shutil.copytree(logs, tmp_path / "ray-logs" / logs.parents[1].name, dirs_exist_ok=True)
        for name in ("driver.log", "head.log", "worker.log"):
            if (root / name).exists():
                shutil.copy(root / name, tmp_path / name)
        shutil.rmtree(root, ignore_errors=True)
        listed = _netns_list()
        ours = [ns for ns in (hosts.head.ns, hosts.worker.ns) if ns in listed]
        survivors = [p for p in started if _running(p)]
        print(f"\n[netns] logs kept in {tmp_path}")
        assert not problems, problems
        assert not ours, f"namespaces left behind: {ours}"
        assert not survivors, f"processes we started survived: {survivors}"


def _netns_list() -> str:
    return subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, timeout=20, check=False
    ).stdout


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


# --- the test -------------------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_cut_link_between_hosts_mid_run_keeps_results_exact(netns_run: Run) -> None:
    run, hosts = netns_run, netns_run.hosts
    env = run.env()
    head_dir, worker_dir = run.root / "h", run.root / "w"

    head = hosts.spawn(
        hosts.head,
        [
            RAY, "start", "--head", "--block", "--disable-usage-stats",
            "--node-ip-address", hosts.head.ip, "--port", str(GCS_PORT),
            "--num-cpus", "2", "--include-dashboard=false", "--temp-dir", str(head_dir),
        ],
        env,
        run.root / "head.log",
    )  # fmt: skip

    def head_dead() -> str | None:
        if head.poll() is not None:
            return f"the head's `ray start` exited ({head.returncode}):\n{run.log_report()}"
        return None

    _wait_for(
        lambda: (head_dir / "ray_current_cluster").exists(), START_TIMEOUT_S, "head up", head_dead
    )
    worker = hosts.spawn(
        hosts.worker,
        [
            RAY, "start", "--block", "--disable-usage-stats",
            "--address", f"{hosts.head.ip}:{GCS_PORT}", "--node-ip-address", hosts.worker.ip,
            "--num-cpus", "1", "--temp-dir", str(worker_dir),
        ],
        env,
        run.root / "worker.log",
    )  # fmt: skip

    def nodes_dead() -> str | None:
        if worker.poll() is not None:
            return f"the worker's `ray start` exited ({worker.returncode}):\n{run.log_report()}"
        return head_dead()

    _wait_for(
        lambda: (worker_dir / "ray_current_cluster").exists(),
        START_TIMEOUT_S,
        "worker up",
        nodes_dead,
    )

    script = run.root / "driver.py"
    script.write_text(DRIVER)
    log = run.root / "driver.log"
    t_driver = time.monotonic()
    driver = hosts.spawn(
        hosts.head,
        [sys.executable, str(script)],
        {**env, "NETNS_N_ITEMS": str(N_ITEMS)},
        log,
    )

    def driver_dead() -> str | None:
        if driver.poll() is not None:
            return f"the driver exited ({driver.returncode}) early:\n{run.log_report()}"
        return nodes_dead()

    left = DRIVER_TIMEOUT_S - (time.monotonic() - t_driver)
    _wait_for(lambda: _first(_events(log), "HALF") is not None, left, "HALF", driver_dead)

    placed = _first(_events(log), "PLACED")
    assert placed is not None, run.log_report()
    hosts_of_actors = sorted(placed["hosts"].values())
    assert hosts_of_actors == sorted([hosts.head.ip, hosts.worker.ip]), (
        f"expected one actor on each host before the cut, got {placed}"
    )

    cut_at = hosts.cut()
    print(f"\n[netns] cut the link at {cut_at:.3f} (actors on {placed['hosts']})")

    left = DRIVER_TIMEOUT_S - (time.monotonic() - t_driver)
    try:
        driver.wait(timeout=max(1.0, left))
    except Exception:
        events = _events(log)
        pytest.fail(
            f"the driver did not finish within {DRIVER_TIMEOUT_S:g} s of its start "
            f"({time.time() - cut_at:.1f} s after the cut); last events: "
            f"{[t for t, _ in events][-5:]}\n{run.log_report()}"
        )

    events = _events(log)
    result = _first(events, "RESULT")
    stats = _first(events, "STATS")
    dead = _first(events, "NODE_DEAD")
    chunks = [e for t, e in events if t == "CHUNK"]
    after = [c for c in chunks if c["t"] > cut_at]
    before = [c for c in chunks if c["t"] <= cut_at]
    stall = (after[0]["t"] - (before[-1]["t"] if before else cut_at)) if after else None
    summary = {
        "driver_rc": driver.returncode,
        "node_dead_after_cut_s": round(dead["t"] - cut_at, 2) if dead else None,
        "first_chunk_after_cut_s": round(after[0]["t"] - cut_at, 2) if after else None,
        "longest_stall_s": round(stall, 2) if stall is not None else None,
        "result_after_cut_s": round(result["t"] - cut_at, 2) if result else None,
        "result": result,
        "stats": stats,
    }
    print(f"[netns] {json.dumps(summary, default=str)}")
    if result is not None:
        print(f"[netns] recovered: cut -> exact result in {result['t'] - cut_at:.2f} s")

    assert driver.returncode == 0 and result is not None, (
        f"the driver failed: {summary}\n{run.log_report()}"
    )
    assert result["exact"] and result["n"] == N_ITEMS, (
        f"counts not exact: {result}\n{run.log_report()}"
    )
    assert dead is not None and dead["ip"] == hosts.worker.ip, (
        f"the GCS never declared the worker dead: {summary}"
    )
    assert stats is not None and stats["alive"] == [hosts.head.ip], stats
    # Whatever still answers after recovery runs on the surviving host.
    answering = [a["host"] for a in stats["actors"] if a["host"] is not None]
    assert answering and set(answering) == {hosts.head.ip}, stats
