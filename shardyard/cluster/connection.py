"""Connecting to Ray: an embedded local Ray by default, or an existing cluster.

* ``connect()`` with no address and no ``RAY_ADDRESS``: starts an embedded local Ray in
  this process, on node IP 127.0.0.1, dashboard off, quiet logs, and Ray's token
  authentication left as Ray 2.60 sets it (on).
* ``connect("auto")``: joins the cluster started on this machine with ``ray start``.
* ``connect("host:6379")``: a GCS address; ``connect("ray://host:10001")``: Ray Client.
* ``RAY_ADDRESS`` in the environment is honoured when no address is given.

Before Ray's own connection loop (which retries for tens of seconds and then raises a
bare ``ConnectionError``), the address is checked in about a second: nothing listening,
no token, or the wrong token each end in one :class:`~shardyard.errors.ClusterConnectionError`
that says which, and what to do. The token comes from Ray's own settings
(:mod:`shardyard.cluster.auth`): with a token at hand and ``RAY_AUTH_MODE`` unset, token
mode is turned on for this process.

If Ray is already initialised (by the user or an earlier call), it is reused as it is;
naming a different cluster then is an error, not a silent reuse.

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
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import ray

from shardyard.cluster import warm
from shardyard.cluster.auth import use_token_if_found
from shardyard.cluster.heap import freeze_once
from shardyard.cluster.preflight import check_address, split_host_port
from shardyard.config import ClusterConfig
from shardyard.errors import ClusterConnectionError

__all__ = ["ClusterInfo", "connect", "disconnect", "embedded"]

log = logging.getLogger(__name__)

_LOOPBACK = "127.0.0.1"
_started_here = False  # whether shardyard started the Ray it is connected to
_connect_lock = threading.Lock()  # one ray.init per process, whichever thread asks first
_owner_release: threading.Event | None = None  # set to end the thread that started Ray
_target: str | None = None  # the address connect() joined (None: embedded or the user's)
_embedded_gcs: str | None = None  # the GCS address of the Ray that connect() started


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
        address = _target or os.environ.get("RAY_ADDRESS", "ray-client")
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

    Raises:
        ClusterConnectionError: within seconds, when nothing answers at the address, the
            cluster wants a token this process lacks or refuses the one it has, or Ray in
            this process is already connected to a different cluster.

    Example:
        >>> info = connect()                 # doctest: +SKIP
        >>> info.embedded                    # doctest: +SKIP
        True
    """
    cfg = config or ClusterConfig()
    with _connect_lock:
        info = _connect(address, cfg)
    if cfg.freeze_gc:
        freeze_once()  # Ray's long-lived objects out of full collections (see heap.py)
    return info


def _connect(address: str | None, cfg: ClusterConfig) -> ClusterInfo:
    global _started_here, _target, _embedded_gcs
    wanted = address or cfg.address
    if ray.is_initialized():
        if wanted is not None and wanted != "local":
            _check_same_cluster(wanted)
        return _info(_started_here)
    target = wanted or os.environ.get("RAY_ADDRESS") or "local"
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
        info = _info(True)
        _embedded_gcs = info.address
        return info
    use_token_if_found()
    resolved = _resolve(target)
    check_address(resolved, cfg.connect_timeout_s)
    try:
        _init_remote(target, common)
    except ConnectionError as exc:  # checked a moment ago: say so, with Ray's reason
        raise ClusterConnectionError(
            target, "unreachable", f"Ray could not join the cluster at {target}: {exc}"
        ) from exc
    _started_here = False
    _target = resolved
    return _info(False)


def _init_remote(target: str, common: dict[str, Any]) -> None:
    """``ray.init`` an existing cluster; under Ray Client, retried twice when the server
    failed to start this client's session (Ray 2.60's proxier can trip over its own
    session process exiting at start: ``ZombieProcess`` in ``start_specific_server``)."""
    for attempt in range(3):
        try:
            ray.init(address=target, **common)
            return
        except ConnectionAbortedError as exc:
            if not target.startswith("ray://") or attempt == 2:
                raise
            log.warning("shardyard: the Ray Client server did not start a session (%s); again", exc)
            time.sleep(1.0)


def _resolve(target: str) -> str:
    """``"auto"`` as the GCS address of the cluster started on this machine."""
    if target != "auto":
        return target
    from ray._private import services

    try:
        found = services.canonicalize_bootstrap_address("auto")
    except ConnectionError as exc:
        raise ClusterConnectionError(
            "auto",
            "unreachable",
            f"connect('auto') found no Ray cluster started on this machine ({exc}); start one "
            "with `shardyard cluster up` or `ray start --head`, or name its address",
        ) from None
    if not found:
        raise ClusterConnectionError(
            "auto", "unreachable", "connect('auto') found no Ray cluster on this machine"
        )
    return str(found)


def _check_same_cluster(wanted: str) -> None:
    """Refuse to reuse this process's Ray when ``wanted`` names another cluster."""
    try:
        current = _target or ray.get_runtime_context().gcs_address
    except Exception:
        return  # a Ray Client session shardyard did not open: nothing to compare with
    try:
        wanted_addr = _resolve(wanted)
    except ClusterConnectionError:
        wanted_addr = wanted
    if _same_cluster(current, wanted_addr):
        return
    raise ClusterConnectionError(
        wanted,
        "mismatch",
        f"this process is already connected to the Ray cluster at {current}, not {wanted}: "
        "call shardyard.disconnect() first (pools on the current cluster stop working), "
        "or leave the address out to use the current cluster",
    )


def _same_cluster(a: str, b: str) -> bool:
    """Whether two addresses name the same cluster (a ``ray://`` and a GCS address of
    one head count as the same; hosts compare by address, this machine's names as one)."""
    client_a, client_b = a.startswith("ray://"), b.startswith("ray://")
    host_a, port_a = split_host_port(a, 10001 if client_a else 6379)
    host_b, port_b = split_host_port(b, 10001 if client_b else 6379)
    if client_a == client_b and port_a != port_b:
        return False
    return bool(_host_ips(host_a) & _host_ips(host_b))


def _host_ips(host: str) -> set[str]:
    import ipaddress
    import socket

    try:
        ips = {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
    except OSError:
        return {host}
    if any(ipaddress.ip_address(ip.split("%")[0]).is_loopback for ip in ips) or ips & _local_ips():
        return {"this-machine"}
    return ips


def _local_ips() -> set[str]:
    import psutil

    return {
        addr.address.split("%")[0]
        for addrs in psutil.net_if_addrs().values()
        for addr in addrs
        if addr.family.name in ("AF_INET", "AF_INET6")
    }


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


def embedded() -> bool:
    """Whether this process is connected to the local Ray that :func:`connect` started (not
    to one the user started after shutting that one down)."""
    if not (_started_here and ray.is_initialized()):
        return False
    try:
        return bool(ray.get_runtime_context().gcs_address == _embedded_gcs)
    except Exception:
        return False


def disconnect() -> None:
    """Disconnect from Ray (and stop the embedded local Ray, if shardyard started it).

    Every open pool of this process is closed first (``shardyard.close_all()``): their
    unfinished items fail with ``PoolClosedError`` instead of waiting forever on actors
    that are gone.

    Example:
        >>> disconnect()                     # doctest: +SKIP
    """
    global _started_here, _owner_release, _target
    from shardyard.scheduler.lifecycle import close_all

    _started_here = False  # first: the pools closing next must not prestart workers (warm)
    close_all(wait=False)
    with _connect_lock:
        warm.forget()
        if ray.is_initialized():
            ray.shutdown()
        _target = None
        if _owner_release is not None:
            _owner_release.set()  # Ray's daemons are gone: the owner thread may end
            _owner_release = None
