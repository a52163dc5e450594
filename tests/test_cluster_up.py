"""A real multi-node cluster from ``shardyard cluster up``, used as a user would.

One cluster (a head and two worker nodes, each its own ``ray start`` process) serves the
whole module; every driver is a separate Python process that reaches it by address with
the cluster's token, exactly as ``eval "$(shardyard cluster up)"`` sets it up. The last
tests SIGKILL a worker node and then run ``shardyard cluster down``, which must leave none
of the processes it started.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from shardyard.cluster.local import LocalCluster

pytestmark = pytest.mark.timeout(600)

# Node deaths found in ~2 s instead of Ray's default ~15-30 s (a test-only speed-up).
FAST_HEALTH = {
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_timeout_ms": "500",
    "RAY_health_check_failure_threshold": "4",
}

RUNNING_COUNT = textwrap.dedent(
    """
    import json, operator, sys, time
    from collections import Counter
    import shardyard
    from shardyard import Shard, ShardPool

    class RunningCount(Shard):
        # Returns each key's count after the item: a lost, doubled or reordered item of a
        # key shows as a wrong number in the outputs.
        def setup(self, shard_id):
            self.counts = Counter()
        def process_item(self, key):
            self.counts[key] += 1
            time.sleep(DELAY)
            return self.counts[key]
        def result(self):
            return self.counts

    DELAY = float(sys.argv[3])  # travels with the class (cloudpickle, by value)

    def emit(**fields):
        print(json.dumps(fields), flush=True)

    n, actors, delay = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    keys = [f"k{i % 503}" for i in range(n)]
    seen = Counter()
    expected = []
    for k in keys:
        seen[k] += 1
        expected.append(seen[k])
    info = shardyard.connect()
    with ShardPool(RunningCount, num_actors=actors, num_shards=24, checkpoint_every=8,
                   failover_after_s=5.0) as pool:
        pool.start()
        emit(event="started", address=info.address,
             actors=[[a.actor, a.node_id, a.pid] for a in pool.stats().actors])
        out, slowest = [], 0.0
        for i in range(0, n, 1000):
            t = time.monotonic()
            out += pool.map(keys[i:i + 1000], keys=keys[i:i + 1000])
            slowest = max(slowest, time.monotonic() - t)
            emit(event="progress", done=len(out), at=time.time())
        total = pool.reduce(operator.add)
        stats = pool.stats()
    wrong = sum(a != b for a, b in zip(out, expected))
    emit(event="result", items=len(out), wrong=wrong, exact=out == expected,
         total_exact=total == Counter(keys), slowest_chunk_s=slowest,
         restarts=sum(a.restarts for a in stats.actors),
         failovers=sum(c.reason == "failover" for c in stats.placement_history))
    """
)

KEYED_MAP = textwrap.dedent(
    """
    import json, operator, sys, time
    from collections import Counter
    import shardyard
    from shardyard import Shard, ShardPool

    class Count(Shard):
        def setup(self, shard_id):
            self.c = Counter()
        def process(self, batch):
            for k in batch:
                self.c[k] += 1
            return [None] * len(batch)
        def result(self):
            return self.c

    keys = [f"k{i % 1000}" for i in range(int(sys.argv[1]))]
    t = time.monotonic()
    info = shardyard.connect()
    with ShardPool(Count, num_actors=3, num_shards=24) as pool:
        pool.map(keys, keys=keys)
        total = pool.reduce(operator.add)
        nodes = sorted({a.node_id for a in pool.stats().actors})
    print(json.dumps({"exact": total == Counter(keys), "items": sum(total.values()),
                      "address": info.address, "nodes": nodes,
                      "seconds": time.monotonic() - t}), flush=True)
    """
)

CONNECT_ONLY = textwrap.dedent(
    """
    import json, time
    import shardyard
    t = time.monotonic()
    try:
        shardyard.connect()
        print(json.dumps({"connected": True}))
    except shardyard.ShardyardError as exc:
        print(json.dumps({"error": type(exc).__name__, "reason": getattr(exc, "reason", None),
                          "message": str(exc), "seconds": time.monotonic() - t}))
    """
)


def _run_cli(args: list[str], env: dict[str, str], timeout: float = 180) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "shardyard", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _exports(text: str) -> dict[str, str]:
    pairs = [line.removeprefix("export ").split("=", 1) for line in text.splitlines()]
    return {k: v for k, v in pairs}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """``shardyard cluster up --workers 2``; yields the cluster and the env it exported."""
    folder = Path(
        os.environ.get("SHARDYARD_TEST_CLUSTER_DIR") or tmp_path_factory.mktemp("cluster")
    )
    home = tmp_path_factory.mktemp("home")  # no ~/.ray/auth_token of the user's
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    base.update(FAST_HEALTH, HOME=str(home), SHARDYARD_CLUSTER_DIR=str(folder))
    up = _run_cli(["cluster", "up", "--workers", "2", "--cpus-per-node", "1"], base)
    try:
        assert up.returncode == 0, up.stderr
        exported = _exports(up.stdout)
        yield {
            "cluster": LocalCluster.load(folder),
            "env": {**base, **exported},
            "bare": base,
            "stderr": up.stderr,
        }
    finally:
        _run_cli(["cluster", "down"], base)


def _driver(
    tmp_path: Path, script: str, env: dict[str, str], *args: str, timeout: float = 300
) -> Any:
    path = tmp_path / "driver.py"
    path.write_text(script)
    return subprocess.run(
        [sys.executable, str(path), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _last_json(text: str) -> dict[str, Any]:
    lines = [ln for ln in text.splitlines() if ln.startswith("{")]
    assert lines, text
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def test_up_prints_eval_lines_and_keeps_its_token_private(cluster: dict[str, Any]) -> None:
    c: LocalCluster = cluster["cluster"]
    env = cluster["env"]
    assert env["RAY_ADDRESS"] == c.address
    assert env["RAY_AUTH_MODE"] == "token"
    token = Path(env["RAY_AUTH_TOKEN_PATH"])
    assert token.parent == Path(c.folder)  # its own token file, not ~/.ray/auth_token
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert "GCS address" in cluster["stderr"] and "eval" in cluster["stderr"]
    status = _run_cli(["cluster", "status"], cluster["bare"])
    assert status.returncode == 0, status.stderr
    assert status.stdout.count(" alive ") == 3, status.stdout  # head + 2 workers


def test_a_driver_in_another_process_connects_by_address_with_the_token(
    cluster: dict[str, Any], tmp_path: Path
) -> None:
    done = _driver(tmp_path, KEYED_MAP, cluster["env"], "30000")
    assert done.returncode == 0, done.stderr
    result = _last_json(done.stdout)
    assert result["exact"] and result["items"] == 30000
    assert result["address"] == cluster["cluster"].address
    assert len(result["nodes"]) == 3  # one actor on each node


@pytest.mark.parametrize("token", ["none", "wrong"])
def test_a_driver_without_the_right_token_is_refused_at_once(
    cluster: dict[str, Any], tmp_path: Path, token: str
) -> None:
    env = {**cluster["bare"], "RAY_ADDRESS": cluster["cluster"].address}
    if token == "wrong":
        env["RAY_AUTH_TOKEN"] = "0" * 64
    start = time.monotonic()
    done = _driver(tmp_path, CONNECT_ONLY, env, timeout=15)  # no retry loop: a hang fails
    took = time.monotonic() - start
    result = _last_json(done.stdout)
    assert result["error"] == "ClusterConnectionError"
    assert result["reason"] == ("token_missing" if token == "none" else "token_rejected")
    assert "RAY_AUTH_TOKEN_PATH" in result["message"]
    print(f"refused ({token} token) in {took:.1f} s, connect() itself {result['seconds']:.2f} s")


def test_a_ray_client_driver_runs_a_200k_keyed_map_exactly(
    cluster: dict[str, Any], tmp_path: Path
) -> None:
    env = {**cluster["env"], "RAY_ADDRESS": cluster["cluster"].client_address}
    done = _driver(tmp_path, KEYED_MAP, env, "200000")
    assert done.returncode == 0, done.stderr
    result = _last_json(done.stdout)
    assert result["exact"] and result["items"] == 200_000
    print(f"ray:// 200k keyed map: {result['seconds']:.1f} s")


def test_a_tokenless_ray_client_driver_is_refused(cluster: dict[str, Any], tmp_path: Path) -> None:
    env = {**cluster["bare"], "RAY_ADDRESS": cluster["cluster"].client_address}
    done = _driver(tmp_path, CONNECT_ONLY, env, timeout=15)
    result = _last_json(done.stdout)
    assert (result["error"], result["reason"]) == ("ClusterConnectionError", "token_missing")
    assert result["message"].startswith(f"the cluster at {env['RAY_ADDRESS']} requires")


def test_a_script_submitted_as_a_ray_job_reports_logs_and_exit_status(
    cluster: dict[str, Any], tmp_path: Path
) -> None:
    job = tmp_path / "job"
    job.mkdir()
    (job / "count_job.py").write_text(KEYED_MAP + "\nimport sys\nsys.exit(int(sys.argv[2]))\n")
    done = _run_cli(
        ["submit", str(job / "count_job.py"), "--", "5000", "3"], cluster["env"], timeout=240
    )
    assert done.returncode == 3, done.stderr  # the script's own exit status
    assert '"exact": true' in done.stdout  # its output, streamed here
    assert "FAILED (exit status 3)" in done.stderr


def test_what_listens_where(cluster: dict[str, Any]) -> None:
    c: LocalCluster = cluster["cluster"]
    listening: set[tuple[str, str, int]] = set()
    for node in c.nodes:
        root = psutil.Process(node.pid)
        for p in [root, *root.children(recursive=True)]:
            try:
                for conn in p.net_connections(kind="tcp"):
                    if conn.status == psutil.CONN_LISTEN:
                        listening.add((p.name(), conn.laddr.ip, conn.laddr.port))
            except psutil.Error:
                continue
    for name, ip, port in sorted(listening, key=lambda e: (e[2], e[0])):
        print(f"{port:>6}  {ip:<22} {name}")
    dashboard_port = int(c.dashboard.rsplit(":", 1)[1])
    gcs_port = int(c.address.rsplit(":", 1)[1])
    dashboard = {ip for _, ip, port in listening if port == dashboard_port}
    assert dashboard == {"127.0.0.1"}  # the Jobs API: this machine only
    assert any(port == gcs_port for _, _, port in listening)  # the GCS, behind the token


def test_a_worker_node_killed_mid_run_loses_and_doubles_nothing(
    cluster: dict[str, Any], tmp_path: Path
) -> None:
    c: LocalCluster = cluster["cluster"]
    path = tmp_path / "driver.py"
    path.write_text(RUNNING_COUNT)
    proc = subprocess.Popen(
        [sys.executable, str(path), "40000", "3", "0.0002"],
        env=cluster["env"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    events: list[dict[str, Any]] = []
    killed_at = None
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if not line.startswith("{"):
                continue
            event = json.loads(line)
            events.append(event)
            if event["event"] == "started":
                assert len({node for _, node, _ in event["actors"]}) == 3  # one per node
            if event["event"] == "progress" and event["done"] >= 10_000 and killed_at is None:
                victim = c.nodes[1]  # worker-0: its ray start, raylet, agents and actors
                procs = [psutil.Process(victim.pid)]
                procs += procs[0].children(recursive=True)
                for p in procs:
                    p.send_signal(signal.SIGKILL)
                killed_at = time.time()
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.stderr is not None
    assert proc.returncode == 0, proc.stderr.read()[-3000:]
    result = events[-1]
    assert result["event"] == "result"
    assert killed_at is not None
    after = [e for e in events if e["event"] == "progress" and e["at"] > killed_at]
    recovery = after[0]["at"] - killed_at if after else float("nan")
    print(
        f"worker node SIGKILLed at 10k of 40k items: next chunk done {recovery:.1f} s later; "
        f"slowest chunk {result['slowest_chunk_s']:.1f} s; restarts {result['restarts']}, "
        f"failovers {result['failovers']}; wrong outputs {result['wrong']}"
    )
    assert result["items"] == 40_000
    assert result["wrong"] == 0 and result["exact"] and result["total_exact"]
    assert result["restarts"] + result["failovers"] >= 1


def test_cluster_down_stops_every_process_it_started(cluster: dict[str, Any]) -> None:
    c = LocalCluster.load(cluster["cluster"].folder)
    recorded = [(n.pid, n.started) for n in c.nodes] + [
        (int(pid), started) for n in c.nodes for pid, started in n.children
    ]
    done = _run_cli(["cluster", "down"], cluster["bare"])
    assert done.returncode == 0, done.stderr
    survivors = []
    for pid, started in recorded:
        try:
            p = psutil.Process(pid)
            if abs(p.create_time() - started) < 1e-3 and p.status() != psutil.STATUS_ZOMBIE:
                survivors.append((pid, p.name()))
        except psutil.NoSuchProcess:
            pass
    assert not survivors
    # Nor anything the nodes started later (actor workers, agents): nothing of its session.
    leftovers = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        if any(c.temp_dir in part for part in p.info["cmdline"] or []):
            leftovers.append(p.info["pid"])
    assert not leftovers
    assert not Path(c.token_path).exists()
    again = _run_cli(["cluster", "status"], cluster["bare"])
    assert again.returncode == 1 and "no cluster is up" in again.stderr
