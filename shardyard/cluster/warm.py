"""Warm worker processes for the embedded local Ray, so a new pool need not wait for Python.

Every Ray actor runs in a worker process of its own, which dies with the actor. Ray starts
``num_cpus`` idle Python workers when it starts (the first pool's actors take those), but
not again: each later pool, in a notebook or a script that makes pools one after another,
waits for new processes to start (~0.6 s each on a small machine, more than everything
else a pool's start does). A worker that has run a plain task is not given to an actor.

So when a pool on the *embedded* local Ray (the one :func:`shardyard.connect` started in
this process) releases its actors, shardyard asks the local raylet to start as many idle
workers again, at most the node's CPUs outstanding, through the raylet's own
``PrestartWorkers`` call (the one Ray's job manager uses; not public API, checked for
Ray 2.60, which ``pyproject.toml`` pins). They start in the background while the user's
program goes on, and the next pool's actors take them. Unused, the raylet stops them after
:data:`KEEP_ALIVE_S` (beyond its soft limit of one idle worker per CPU). What it costs: up
to one idle Python process per CPU of the embedded node, as right after ``ray.init``, and
the CPU to start them once a pool closes.

Nothing is asked of a cluster shardyard did not start (a ``ray start`` cluster, a remote
one, the user's own ``ray.init``): its workers are its operator's to manage. A failing
request is logged at debug level and changes nothing else.

Example:
    >>> from shardyard.cluster import warm
    >>> warm.KEEP_ALIVE_S    # seconds an unused prestarted worker is kept
    300
"""

from __future__ import annotations

import logging
import threading
from typing import Any

__all__ = ["KEEP_ALIVE_S", "consumed", "forget", "replenish"]

log = logging.getLogger(__name__)

KEEP_ALIVE_S = 300  # how long an unused prestarted worker is kept beyond the soft limit

_lock = threading.Lock()
_outstanding = 0  # workers asked for and not yet taken by a pool's actors (an upper bound)
_stub: Any = None  # (raylet address, its NodeManagerService stub), made when first needed
_calls: list[Any] = []  # requests on their way (kept referenced until done)


def replenish(n: int) -> int:
    """A pool released ``n`` actors: ask the embedded Ray to start as many idle workers.

    At most the embedded node's CPUs are outstanding at a time. Returns how many were
    asked for (0 when not connected to an embedded Ray, or the request failed to leave).
    """
    global _outstanding, _stub
    from shardyard.cluster import connection

    if n <= 0 or not connection.embedded():
        return 0
    try:
        import ray
        from ray.core.generated import common_pb2, node_manager_pb2, runtime_environment_pb2

        worker: Any = ray._private.worker.global_worker
        pb: Any = node_manager_pb2  # generated modules: no type stubs
        env_pb: Any = runtime_environment_pb2
        cap = int(ray.cluster_resources().get("CPU", 0)) or 1  # a GCS call: not under _lock
        with _lock:
            want = min(n, max(0, cap - _outstanding))
            if want == 0:
                return 0
            node = worker.node
            address = f"{node.node_ip_address}:{node.node_manager_port}"
            if _stub is None or _stub[0] != address:  # first, or Ray was started again
                from ray._private.grpc_utils import init_grpc_channel
                from ray.core.generated import node_manager_pb2_grpc

                channel = init_grpc_channel(address)
                _stub = (address, node_manager_pb2_grpc.NodeManagerServiceStub(channel))
            request = pb.PrestartWorkersRequest(
                language=common_pb2.PYTHON,  # type: ignore[attr-defined]
                job_id=worker.current_job_id.binary(),
                runtime_env_info=env_pb.RuntimeEnvInfo(
                    serialized_runtime_env=worker.core_worker.get_current_runtime_env()
                ),
                keep_alive_duration_secs=KEEP_ALIVE_S,
                num_workers=want,
            )
            # Not waited for: the raylet starts the processes on its own.
            _calls[:] = [c for c in _calls if not c.done()]
            _calls.append(_stub[1].PrestartWorkers.future(request, timeout=10))
            _outstanding += want
            return want
    except Exception as exc:  # an optimisation only: never fail a pool's close for it
        log.debug("shardyard: could not prestart Ray workers: %r", exc)
        return 0


def consumed(n: int) -> None:
    """A pool started ``n`` actors: they took (up to) ``n`` of the outstanding workers."""
    global _outstanding
    with _lock:
        _outstanding = max(0, _outstanding - n)


def forget() -> None:
    """Ray was shut down: its workers and the raylet's address are gone."""
    global _outstanding, _stub
    with _lock:
        _outstanding = 0
        _stub = None
        _calls.clear()
