"""Connecting to Ray: an embedded local Ray by default, or an existing cluster.

* ``connect()`` with no address and no ``RAY_ADDRESS``: starts an embedded local Ray in
  this process, on node IP 127.0.0.1, dashboard off, quiet logs, and Ray's token
  authentication left as Ray 2.60 sets it (on).
* ``connect("auto")``: joins the cluster started on this machine with ``ray start``.
* ``connect("ray://host:10001")``: Ray Client; ``connect("host:6379")``: a GCS address.
* ``RAY_ADDRESS`` in the environment is honoured when no address is given.

If Ray is already initialised (by the user or an earlier call), it is reused as it is.

Example:
    >>> import shardyard
    >>> info = shardyard.connect()          # doctest: +SKIP
    >>> info.node_ip                        # doctest: +SKIP
    '127.0.0.1'
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import ray

from shardyard.config import ClusterConfig

__all__ = ["ClusterInfo", "connect", "disconnect"]

_LOOPBACK = "127.0.0.1"
_started_here = False  # whether shardyard started the Ray it is connected to
_connect_lock = threading.Lock()  # one ray.init per process, whichever thread asks first
_owner_release: threading.Event | None = None  # set to end the thread that started Ray


@dataclass(frozen=True)
class ClusterInfo:
    """What :func:`connect` reached.

    Attributes:
        address: the GCS address (or the Ray Client address).
        node_ip: this driver's node IP as Ray sees it.
        embedded: True when shardyard started a local Ray in this process.
        num_cpus: CPUs of the whole cluster.
    """

    address: str
    node_ip: str
    embedded: bool
    num_cpus: int


@contextmanager
def _loopback_node_ip() -> Any:
    # Ray resolves "127.0.0.1" to the machine's routable IP unless it believes it runs
    # a single-machine cluster (its Windows/macOS switch). Flip that module constant only
    # around ray.init, so the embedded node registers on loopback. Checked for Ray 2.60.
    from ray._private import ray_constants

    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


def _info(embedded: bool) -> ClusterInfo:
    ctx = ray.get_runtime_context()
    try:
        address = ctx.gcs_address
    except Exception:  # Ray Client has no GCS address on the client side
        address = os.environ.get("RAY_ADDRESS", "ray-client")
    try:
        node_ip = ray.util.get_node_ip_address()
    except Exception:
        node_ip = "unknown"
    cpus = int(ray.cluster_resources().get("CPU", 0))
    return ClusterInfo(address=address, node_ip=node_ip, embedded=embedded, num_cpus=cpus)


def connect(address: str | None = None, *, config: ClusterConfig | None = None) -> ClusterInfo:
    """Connect this process to Ray, starting an embedded local Ray when no cluster is named.

    Args:
        address: ``None`` (embedded local Ray, or ``RAY_ADDRESS`` when set), ``"local"``
            (always embedded), ``"auto"``, ``"ray://host:10001"`` or ``"host:port"``.
        config: further settings; its ``address`` is used when ``address`` is ``None``.

    Returns:
        A :class:`ClusterInfo` describing the connection.

    Example:
        >>> info = connect()                 # doctest: +SKIP
        >>> info.embedded                    # doctest: +SKIP
        True
    """
    with _connect_lock:
        return _connect(address, config or ClusterConfig())


def _connect(address: str | None, cfg: ClusterConfig) -> ClusterInfo:
    global _started_here
    if ray.is_initialized():
        return _info(_started_here)
    target = address or cfg.address or os.environ.get("RAY_ADDRESS") or "local"
    common: dict[str, Any] = {
        "namespace": cfg.namespace,
        "log_to_driver": cfg.log_to_driver,
        "logging_level": logging.WARNING,
        "configure_logging": True,
    }
    if target == "local":
        # An explicit address must not be overridden by a RAY_ADDRESS the user exported.
        saved_env = os.environ.pop("RAY_ADDRESS", None)

        def start() -> None:
            with _loopback_node_ip():
                ray.init(
                    address="local",
                    _node_ip_address=_LOOPBACK,
                    include_dashboard=cfg.include_dashboard,
                    num_cpus=cfg.num_cpus,
                    **common,
                )

        try:
            if threading.current_thread() is threading.main_thread():
                start()
            else:
                _start_on_owner_thread(start)
        finally:
            if saved_env is not None:
                os.environ["RAY_ADDRESS"] = saved_env
        _started_here = True
        return _info(True)
    ray.init(address=target, **common)
    _started_here = False
    return _info(False)


def _start_on_owner_thread(start: Callable[[], None]) -> None:
    """Run ``start`` (``ray.init``) on a thread that outlives the caller's.

    Ray starts gcs_server and raylet with a parent-death signal, which Linux ties to the
    thread that spawned them: started from a short-lived thread (``asyncio.to_thread``, a
    worker thread), the embedded Ray would die with that thread. The owner thread sleeps
    until ``disconnect()``.
    """
    global _owner_release
    started = threading.Event()
    release = threading.Event()
    errors: list[BaseException] = []

    def own() -> None:
        try:
            start()
        except BaseException as exc:
            errors.append(exc)
            return
        finally:
            started.set()
        release.wait()

    threading.Thread(target=own, name="shardyard-ray-owner", daemon=True).start()
    started.wait()
    if errors:
        raise errors[0]
    _owner_release = release


def disconnect() -> None:
    """Disconnect from Ray (and stop the embedded local Ray, if shardyard started it).

    Example:
        >>> disconnect()                     # doctest: +SKIP
    """
    global _started_here, _owner_release
    with _connect_lock:
        if ray.is_initialized():
            ray.shutdown()
        _started_here = False
        if _owner_release is not None:
            _owner_release.set()  # Ray's daemons are gone: the owner thread may end
            _owner_release = None
