"""Check, in about a second, that a Ray address answers and accepts this process's token.

Ray's own connection path retries for 20-40 s and then raises a bare ``ConnectionError``
(the reason, if any, buried in a chained traceback and in log lines). These checks ask the
same servers one question each, with short deadlines, and turn the answer into a
:class:`~shardyard.errors.ClusterConnectionError` that says what is wrong and what to do:

* a GCS address (``host:6379``): a TCP connect, then one GCS call made with Ray's own
  client (``GcsClient``), which carries the token when token mode is on;
* a Ray Client address (``ray://host:10001``): a TCP connect, then one ping of the Ray
  Client server over a channel that Ray's gRPC helper sets up with the token.

Example:
    >>> check_address("127.0.0.1:1", timeout_s=1.0)    # doctest: +SKIP
    Traceback (most recent call last):
    ClusterConnectionError: nothing answers at 127.0.0.1:1 ...
"""

from __future__ import annotations

import socket
import threading
from typing import Any

from shardyard.cluster.auth import AUTH_MODE_ENV, TOKEN_ENV, TOKEN_PATH_ENV, find_token
from shardyard.errors import ClusterConnectionError

__all__ = ["check_address", "split_host_port"]

_TOKEN_HELP = (
    f"Give this process the cluster's token: `export {TOKEN_PATH_ENV}=/path/to/token` "
    f"(or `{TOKEN_ENV}=...`), and `export {AUTH_MODE_ENV}=token` for Ray's own commands "
    "(`shardyard cluster up` prints both lines; see cluster/README.md)."
)


def split_host_port(address: str, default_port: int) -> tuple[str, int]:
    """``"host:port"`` (or ``"ray://host:port"``, ``"[::1]:port"``) as ``(host, port)``.

    Example:
        >>> split_host_port("ray://10.0.0.5:10001", 10001)
        ('10.0.0.5', 10001)
        >>> split_host_port("[::1]:6379", 6379)
        ('::1', 6379)
    """
    rest = address.split("://", 1)[-1].rstrip("/")
    if rest.startswith("["):
        host, _, tail = rest[1:].partition("]")
        port = tail.lstrip(":")
    else:
        host, sep, port = rest.rpartition(":")
        if not sep:
            host, port = rest, ""
    return host, int(port) if port else default_port


def check_address(address: str, timeout_s: float = 5.0) -> None:
    """Raise :class:`ClusterConnectionError` unless ``address`` answers and accepts our token.

    Args:
        address: ``"host:port"`` of a GCS, or ``"ray://host:port"`` of a Ray Client server.
        timeout_s: the deadline of each of the two steps.
    """
    if "://" in address and not address.startswith("ray://"):
        raise ClusterConnectionError(
            address,
            "unreachable",
            f"{address} is not a Ray cluster address: give the GCS address (host:6379, "
            "RAY_ADDRESS) or a Ray Client address (ray://host:10001); an http:// address is "
            "the dashboard's, for `shardyard submit --address` and `ray job submit`",
        )
    client = address.startswith("ray://")
    host, port = split_host_port(address, 10001 if client else 6379)
    _check_tcp(address, host, port, timeout_s)
    if client:
        _check_ray_client(address, f"{host}:{port}", timeout_s)
    else:
        _check_gcs(address, f"{host}:{port}", timeout_s)


def _check_tcp(address: str, host: str, port: int, timeout_s: float) -> None:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return
    except OSError as exc:
        what = "Ray Client server" if address.startswith("ray://") else "Ray head (GCS)"
        raise ClusterConnectionError(
            address,
            "unreachable",
            f"nothing answers at {address} ({type(exc).__name__}: {exc}): is the {what} "
            f"running, and is port {port} open to this machine? On the head, "
            "`ray status` (or `shardyard cluster status`) shows the cluster.",
        ) from None


def _auth_error(address: str, detail: str) -> ClusterConnectionError:
    source = find_token()
    if source is None:
        return ClusterConnectionError(
            address,
            "token_missing",
            f"the cluster at {address} requires Ray's auth token and this process has none "
            f"({detail}). {_TOKEN_HELP}",
        )
    return ClusterConnectionError(
        address,
        "token_rejected",
        f"the cluster at {address} refused this process's Ray auth token, read from "
        f"{source.where} ({detail}): it is not this cluster's token. {_TOKEN_HELP}",
    )


def _run_with_deadline(fn: Any, timeout_s: float) -> tuple[bool, Any, BaseException | None]:
    """Run ``fn`` on a daemon thread; ``(finished, result, error)`` after ``timeout_s``."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=run, name="shardyard-preflight", daemon=True)
    t.start()
    t.join(timeout_s)
    return (not t.is_alive(), box.get("result"), box.get("error"))


def _check_gcs(address: str, gcs: str, timeout_s: float) -> None:
    from ray._raylet import GcsClient  # type: ignore[attr-defined]
    from ray.exceptions import AuthenticationError

    # Creating the client asks the GCS for the cluster id: refused at once with a wrong or
    # missing token. Checked for Ray 2.60.
    done, _, error = _run_with_deadline(lambda: GcsClient(address=gcs), timeout_s * 2)
    if not done:
        raise ClusterConnectionError(
            address,
            "unreachable",
            f"{address} accepts connections but no Ray GCS answered within {timeout_s * 2:g} s: "
            "is it the head's GCS port (6379 by default, `ray start --head --port`)?",
        )
    if isinstance(error, AuthenticationError):
        raise _auth_error(address, str(error).split(".", 1)[0])
    if error is not None:
        raise ClusterConnectionError(
            address,
            "unreachable",
            f"the Ray GCS at {address} did not answer ({type(error).__name__}: {error})",
        ) from error


def _check_ray_client(address: str, target: str, timeout_s: float) -> None:
    import grpc
    from ray._private.grpc_utils import init_grpc_channel
    from ray.core.generated import ray_client_pb2, ray_client_pb2_grpc

    # The channel Ray Client itself would use (with the token interceptor in token mode).
    channel = init_grpc_channel(target, options=[], asynchronous=False)
    try:
        stub = ray_client_pb2_grpc.RayletDriverStub(channel)
        pb: Any = ray_client_pb2
        ping = pb.ClusterInfoRequest(type=pb.ClusterInfoType.PING)
        stub.ClusterInfo(ping, timeout=timeout_s)
    except grpc.RpcError as exc:
        code = exc.code()
        if code == grpc.StatusCode.UNAUTHENTICATED:
            raise _auth_error(address, exc.details() or "unauthenticated") from None
        raise ClusterConnectionError(
            address,
            "unreachable",
            f"the Ray Client server at {address} did not answer ({code.name}: "
            f"{exc.details()}): is it running (`ray start --head` starts it on port 10001)?",
        ) from None
    finally:
        channel.close()
