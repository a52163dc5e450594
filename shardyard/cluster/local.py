"""A Ray cluster on this machine: a head and worker nodes as separate ``ray start`` processes.

``shardyard cluster up --workers 2`` starts a head and two worker nodes, each its own
``ray start --block`` process with its own raylet and its own resources, guarded by a token
generated for this cluster (a file of mode 0600 in the cluster's folder, not the user's
``~/.ray/auth_token``). It records every PID it started in ``cluster.json`` in that folder,
prints how to connect, and writes to stdout only lines a shell can ``eval``::

    eval "$(shardyard cluster up --workers 2)"
    python my_job.py                      # shardyard.connect() finds RAY_ADDRESS + token
    shardyard cluster status
    shardyard cluster down                # stops exactly what `up` started

What listens where (Ray 2.60 ``ray start``): the GCS (``--port``, 6379 when free) and the
raylets, object managers and Ray Client server (10001 when free) on every interface, so
the token is what keeps others out; the dashboard and Jobs API on 127.0.0.1 only.

Example:
    >>> cluster = LocalCluster.up(workers=1, cpus_per_node=1)   # doctest: +SKIP
    >>> cluster.address                                          # doctest: +SKIP
    '192.0.2.2:6379'
    >>> cluster.down()                                           # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from shardyard.cluster.auth import AUTH_MODE_ENV, TOKEN_ENV, TOKEN_PATH_ENV, write_token_file
from shardyard.errors import ShardyardError

__all__ = ["ClusterDownError", "LocalCluster", "NodeProcess", "default_cluster_dir"]

STATE_FILE = "cluster.json"
TOKEN_FILE = "auth_token"
_STARTED = "Ray runtime started"


class ClusterDownError(ShardyardError, RuntimeError):
    """There is no cluster of ``shardyard cluster up`` in that folder, or it failed to start."""


def default_cluster_dir() -> Path:
    """``$SHARDYARD_CLUSTER_DIR``, else ``~/.shardyard/cluster``."""
    env = os.environ.get("SHARDYARD_CLUSTER_DIR")
    return Path(env).expanduser() if env else Path.home() / ".shardyard" / "cluster"


@dataclass
class NodeProcess:
    """One node: the ``ray start --block`` process and the Ray processes it spawned.

    Attributes:
        role: ``"head"`` or ``"worker-<i>"``.
        pid: the ``ray start --block`` process.
        started: its creation time (guards against a reused PID).
        cpus: the CPUs it offers.
        log: its ``ray start`` output.
        children: ``[pid, creation time]`` of the Ray processes it spawned at start
            (gcs_server, raylet, agents, ...).
    """

    role: str
    pid: int
    started: float
    cpus: int
    log: str
    children: list[list[float]] = field(default_factory=list)


@dataclass
class LocalCluster:
    """A cluster that ``shardyard cluster up`` started; loaded back from its folder.

    Attributes:
        folder: where ``cluster.json``, the token and the logs live.
        address: the GCS address (``RAY_ADDRESS``).
        client_address: the Ray Client address (``ray://host:port``).
        dashboard: the dashboard / Jobs API URL (on 127.0.0.1).
        token_path: this cluster's token file (mode 0600).
        temp_dir: Ray's session folder root (short: Unix socket paths are limited).
        nodes: the head first, then the workers.
    """

    folder: str
    address: str
    client_address: str
    dashboard: str
    token_path: str
    temp_dir: str
    nodes: list[NodeProcess]

    # --- starting ---------------------------------------------------------------------------

    @classmethod
    def up(
        cls,
        workers: int = 2,
        cpus_per_node: int = 1,
        head_cpus: int | None = None,
        folder: str | os.PathLike[str] | None = None,
        port: int | None = None,
        client_port: int | None = None,
        dashboard_port: int | None = None,
        node_ip: str | None = None,
        worker_resources: dict[str, float] | None = None,
        timeout_s: float = 90.0,
    ) -> LocalCluster:
        """Start a head and ``workers`` worker nodes on this machine; wait until all joined.

        Args:
            workers: worker nodes (0: the head alone).
            cpus_per_node: CPUs each worker node offers (Ray's logical CPUs).
            head_cpus: CPUs of the head (default: ``cpus_per_node``).
            folder: the cluster's folder (default: :func:`default_cluster_dir`).
            port: the GCS port (default: 6379 if free, else a free one).
            client_port: the Ray Client port (default: 10001 if free, else a free one).
            dashboard_port: the dashboard port on 127.0.0.1 (default: 8265 if free).
            node_ip: the address nodes register with (default: Ray's choice for this
                machine, the address other machines reach it at).
            worker_resources: custom resources each worker offers, e.g. ``{"ingest": 4}``,
                to pin pools to those nodes (``PoolConfig.resources_per_actor``).
            timeout_s: how long starting may take.

        Raises:
            ClusterDownError: a cluster of this folder is still up, or a node did not start
                (the message carries the end of its log); whatever did start is stopped.
        """
        import ray._private.services as services

        root = Path(folder) if folder is not None else default_cluster_dir()
        root.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(ClusterDownError):
            running = cls.load(root)
            if running.head_alive():
                raise ClusterDownError(
                    f"a cluster is already up from {root} (head PID {running.nodes[0].pid}): "
                    "`shardyard cluster down` first, or use another --dir"
                )
            running.down()  # the remains of one whose head died: clear them
        ip = node_ip or services.get_node_ip_address()
        deadline = time.monotonic() + timeout_s
        for attempt in range(3):
            # Free ports are chosen here and bound by Ray a moment later: another Ray on
            # this machine may take one in between. Then the head starts again, on others.
            cluster = cls(
                folder=str(root.resolve()),
                address=f"{ip}:{port or _free_port(6379)}",
                client_address=f"ray://{ip}:{client_port or _free_port(10001)}",
                dashboard=f"http://127.0.0.1:{dashboard_port or _free_port(8265)}",
                token_path=write_token_file(root / TOKEN_FILE),
                temp_dir=tempfile.mkdtemp(prefix="sy-ray-"),
                nodes=[],
            )
            try:
                cluster._start_head(head_cpus if head_cpus is not None else cpus_per_node, ip)
                cluster._wait_started(cluster.nodes[:1], deadline)
                break
            except BaseException as exc:
                cluster.down()
                if attempt == 2 or not _port_taken(str(exc)):
                    raise
        try:
            extra = ["--resources", json.dumps(worker_resources)] if worker_resources else []
            for i in range(workers):
                # One at a time: nodes of one machine starting together race for the
                # session folder's socket names and default ports.
                worker = cluster._start_node(
                    f"worker-{i}",
                    cpus_per_node,
                    [
                        f"--address={cluster.address}",
                        # Its own port: 0 means Ray's default (52365), which the first node
                        # to get there takes, and a node's agent without one disables
                        # itself (the head's: the Jobs API has no agent to run jobs).
                        f"--dashboard-agent-listen-port={_free_port(0)}",
                        *extra,
                    ],
                    ip,
                )
                cluster._wait_started([worker], deadline)
            cluster._wait_joined(workers + 1, deadline)
        except BaseException:
            cluster.down()
            raise
        return cluster

    def _start_head(self, cpus: int, ip: str) -> NodeProcess:
        return self._start_node(
            "head",
            cpus,
            [
                "--head",
                f"--port={_port_of(self.address)}",
                f"--ray-client-server-port={_port_of(self.client_address)}",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={_port_of(self.dashboard)}",
                # The Jobs API runs jobs through the head's agent: a taken port would leave
                # it without one ("No available agent to submit job"). Not Ray's default
                # 52365, which any other Ray on this machine tries first.
                f"--dashboard-agent-listen-port={_free_port(0)}",
                f"--temp-dir={self.temp_dir}",
            ],
            ip,
        )

    def _env(self) -> dict[str, str]:
        """The environment of every process of this cluster: its token, nothing else's."""
        env = {k: v for k, v in os.environ.items() if k not in (TOKEN_ENV, "RAY_ADDRESS")}
        env[AUTH_MODE_ENV] = "token"
        env[TOKEN_PATH_ENV] = self.token_path
        # Jobs run `python ...`: the Python (and packages) this cluster was started with.
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        return env

    def _start_node(self, role: str, cpus: int, args: list[str], ip: str) -> NodeProcess:
        log = Path(self.folder) / f"{role}.log"
        cmd = [
            *_ray_cli(),
            "start",
            *args,
            f"--num-cpus={cpus}",
            f"--node-ip-address={ip}",
            "--disable-usage-stats",
            "--block",
        ]
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self._env(),
                start_new_session=True,  # outlives `cluster up`; not in its process group
            )
        node = NodeProcess(role, proc.pid, _create_time(proc.pid), cpus, str(log))
        self.nodes.append(node)
        self._save()
        return node

    def _wait_started(self, nodes: list[NodeProcess], deadline: float) -> None:
        waiting = list(nodes)
        while waiting:
            for node in list(waiting):
                text = Path(node.log).read_text(errors="replace")
                if _STARTED in text:
                    node.children = [[p, _create_time(p)] for p in _descendants(node.pid)]
                    waiting.remove(node)
                elif not _alive(node.pid, node.started):
                    raise ClusterDownError(
                        f"the {node.role} node did not start; the end of {node.log}:\n"
                        + _tail(text)
                    )
            if waiting and time.monotonic() > deadline:
                raise ClusterDownError(
                    f"{', '.join(n.role for n in waiting)} did not start in time; see "
                    + ", ".join(n.log for n in waiting)
                )
            time.sleep(0.2)
        self._save()

    def _wait_joined(self, expected: int, deadline: float) -> None:
        while True:
            try:
                alive = [n for n in self.query(timeout_s=30)["nodes"] if n["alive"]]
                if len(alive) >= expected:
                    return
            except ClusterDownError:
                pass
            if time.monotonic() > deadline:
                raise ClusterDownError(f"only some of the {expected} nodes joined in time")
            time.sleep(0.5)

    # --- state --------------------------------------------------------------------------------

    def _save(self) -> None:
        path = Path(self.folder) / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        os.replace(tmp, path)

    @classmethod
    def load(cls, folder: str | os.PathLike[str] | None = None) -> LocalCluster:
        """The cluster recorded in ``folder`` (default: :func:`default_cluster_dir`).

        Raises:
            ClusterDownError: no cluster was started from that folder.
        """
        root = Path(folder) if folder is not None else default_cluster_dir()
        try:
            data = json.loads((root / STATE_FILE).read_text())
        except (OSError, ValueError):
            raise ClusterDownError(
                f"no cluster is up from {root} (`shardyard cluster up` starts one)"
            ) from None
        data["nodes"] = [NodeProcess(**n) for n in data["nodes"]]
        return cls(**data)

    def head_alive(self) -> bool:
        """Whether the head's ``ray start`` process still runs."""
        return bool(self.nodes) and _alive(self.nodes[0].pid, self.nodes[0].started)

    def exports(self) -> str:
        """The lines a shell can ``eval`` to point Ray, shardyard and Ray's CLI here."""
        return "\n".join(
            [
                f"export RAY_ADDRESS={self.address}",
                f"export {TOKEN_PATH_ENV}={self.token_path}",
                f"export {AUTH_MODE_ENV}=token",
                f"export RAY_API_SERVER_ADDRESS={self.dashboard}",
            ]
        )

    def instructions(self) -> str:
        """How to connect, for people (``up`` prints it to stderr)."""
        workers = len(self.nodes) - 1
        return "\n".join(
            [
                f"shardyard: a Ray cluster is up: a head and {workers} worker node(s) on this "
                f"machine, {sum(n.cpus for n in self.nodes)} CPUs.",
                f"  GCS address   {self.address}   (RAY_ADDRESS; listens on all interfaces)",
                f"  Ray Client    {self.client_address}",
                f"  Dashboard     {self.dashboard}   (Jobs API; 127.0.0.1 only)",
                f"  Token         {self.token_path}   (mode 0600; every port asks for it)",
                f"  Folder        {self.folder}   (cluster.json, node logs)",
                "Point this shell at it (a script or notebook started from it connects with "
                "shardyard.connect() or ShardPool(...)):",
                '  eval "$(shardyard cluster env)"',
                "Another machine joins with the token file copied to it:",
                f"  {AUTH_MODE_ENV}=token {TOKEN_PATH_ENV}=/path/to/auth_token "
                f"ray start --address={self.address}",
                "Run a script as a Ray Job:   shardyard submit my_job.py",
                "Stop it:                     shardyard cluster down",
            ]
        )

    # --- looking at it ------------------------------------------------------------------------

    def query(self, timeout_s: float = 60.0) -> dict[str, Any]:
        """Nodes (id, IP, alive, CPUs, custom resources) and live actors and jobs, asked
        of the cluster by a separate Python process that holds this cluster's token.

        Raises:
            ClusterDownError: the cluster did not answer.
        """
        try:
            done = subprocess.run(
                [sys.executable, "-c", _QUERY],
                env={**self._env(), "RAY_ADDRESS": self.address},
                capture_output=True,
                text=True,
                timeout=timeout_s,
            )
        except subprocess.TimeoutExpired:
            raise ClusterDownError(f"the cluster at {self.address} did not answer") from None
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
        if done.returncode != 0 or not lines:
            raise ClusterDownError(
                f"the cluster at {self.address} did not answer:\n{_tail(done.stderr)}"
            )
        result: dict[str, Any] = json.loads(lines[-1])
        return result

    def status(self) -> str:
        """A table of the nodes, their processes and what runs on the cluster."""
        rows = [f"cluster from {self.folder}: {self.address}  ({self.client_address})"]
        for node in self.nodes:
            state = "running" if _alive(node.pid, node.started) else "gone"
            rows.append(f"  {node.role:<10} pid {node.pid:<8} {node.cpus} CPU  {state}")
        try:
            info = self.query(timeout_s=30)
        except ClusterDownError as exc:
            rows.append(f"not answering: {exc}")
            return "\n".join(rows)
        rows.append("Ray nodes:")
        for n in info["nodes"]:
            res = ", ".join(f"{k}: {v:g}" for k, v in sorted(n["custom"].items()))
            rows.append(
                f"  {n['node_id'][:12]}  {n['ip']:<15} {'alive' if n['alive'] else 'dead '}  "
                f"CPU {n['cpus_free']:g}/{n['cpus']:g} free"
                + (f"  {res}" if res else "")
                + ("  (head)" if n["head"] else "")
            )
        actors = info["actors"]
        rows.append(
            f"Actors alive: {sum(actors.values())}"
            + (" (" + ", ".join(f"{k}: {v}" for k, v in sorted(actors.items())) + ")")
            * bool(actors)
        )
        rows.append(f"Drivers/jobs running: {info['jobs']}")
        return "\n".join(rows)

    # --- stopping -----------------------------------------------------------------------------

    def down(self, grace_s: float = 10.0) -> list[int]:
        """Stop exactly the processes this cluster started, by their recorded PIDs.

        Each ``ray start --block`` gets SIGTERM (it stops its own node's processes); what
        still runs after ``grace_s`` (of the recorded processes and their children) gets
        SIGKILL. Workers go first, the head last. The token file, the state file and
        Ray's session folder are removed; the node logs and Ray's logs (``ray-logs``) stay.

        Returns:
            The PIDs that were still running and were stopped.
        """
        stopped: list[int] = []
        for node in reversed(self.nodes):
            procs = _tree(node)
            if not procs:
                continue
            stopped += [p.pid for p in procs]
            if procs[0].pid == node.pid:  # let `ray start --block` stop its node itself
                with contextlib.suppress(Exception):
                    procs[0].send_signal(signal.SIGTERM)
                _wait_gone(procs, grace_s)
            for p in procs:
                with contextlib.suppress(Exception):
                    p.kill()
            _wait_gone(procs, 5.0)
        for name in (STATE_FILE, TOKEN_FILE):
            (Path(self.folder) / name).unlink(missing_ok=True)
        if self.temp_dir and Path(self.temp_dir).name.startswith("sy-ray-"):
            # Ray's own logs (raylet, gcs_server, workers) stay, in the cluster's folder.
            for logs in Path(self.temp_dir).glob("session_2*/logs"):
                with contextlib.suppress(OSError):
                    shutil.copytree(logs, Path(self.folder) / "ray-logs", dirs_exist_ok=True)
            shutil.rmtree(self.temp_dir, ignore_errors=True)
        return stopped


# --- processes --------------------------------------------------------------------------------


def _ray_cli() -> list[str]:
    return [sys.executable, "-m", "ray.scripts.scripts"]


def _create_time(pid: int) -> float:
    import psutil

    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return 0.0


def _alive(pid: int, started: float) -> bool:
    import psutil

    try:
        p = psutil.Process(pid)
        return p.is_running() and abs(p.create_time() - started) < 1e-3 and p.status() != "zombie"
    except psutil.Error:
        return False


def _descendants(pid: int) -> list[int]:
    import psutil

    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def _tree(node: NodeProcess) -> list[Any]:
    """The node's recorded processes that still run (same PID and creation time), and the
    children they have now (the workers its raylet started), the ``ray start`` one first."""
    import psutil

    found: dict[int, Any] = {}
    for pid, started in [[node.pid, node.started], *node.children]:
        if not _alive(int(pid), started):
            continue
        p = psutil.Process(int(pid))
        found[p.pid] = p
        with contextlib.suppress(psutil.Error):
            for c in p.children(recursive=True):
                found.setdefault(c.pid, c)
    head = [found.pop(node.pid)] if node.pid in found else []
    return head + list(found.values())


def _wait_gone(procs: list[Any], timeout_s: float) -> None:
    import psutil

    with contextlib.suppress(Exception):
        psutil.wait_procs(procs, timeout=timeout_s)


def _free_port(preferred: int) -> int:
    for candidate in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("", candidate))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise ClusterDownError("no free TCP port")  # pragma: no cover


def _port_taken(text: str) -> bool:
    return any(m in text for m in ("already occupied", "already in use", "Address in use"))


def _port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


# Run in a child process: the caller's own Ray (and its token) stay untouched.
_QUERY = r"""
import json, logging, ray
ray.init(logging_level=logging.ERROR, log_to_driver=False)
from ray.util.state import list_actors, list_jobs
free = {}
nodes = []
for n in ray.nodes():
    res = n["Resources"]
    nodes.append({
        "node_id": n["NodeID"], "ip": n["NodeManagerAddress"], "alive": n["Alive"],
        "cpus": res.get("CPU", 0.0), "head": "node:__internal_head__" in res,
        "custom": {k: v for k, v in res.items()
                   if k not in ("CPU", "GPU", "memory", "object_store_memory")
                   and not k.startswith("node:")},
    })
try:
    from ray._private.state import available_resources_per_node
    free = available_resources_per_node()
except Exception:
    free = {}
for n in nodes:
    n["cpus_free"] = free.get(n["node_id"], {}).get("CPU", 0.0) if n["alive"] else 0.0
actors = {}
for a in list_actors(filters=[("state", "=", "ALIVE")], limit=10000):
    actors[a.class_name] = actors.get(a.class_name, 0) + 1
jobs = sum(1 for j in list_jobs() if str(j.status).endswith("RUNNING"))
print(json.dumps({"nodes": nodes, "actors": actors, "jobs": max(0, jobs - 1)}))
"""
