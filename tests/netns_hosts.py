"""Two "hosts" on one Linux machine: two network namespaces joined by a veth pair.

Used by ``tests/test_netns.py``. Each namespace has its own loopback and one end of a veth
pair with its own address, so processes started in it (through ``ip netns exec``) see a
machine of their own on the network; the file system and the PID space stay shared.

    namespace syh-<id> ("head")           namespace syw-<id> ("worker")
    lo 127.0.0.1                          lo 127.0.0.1
    vh<id> 10.251.<x>.1/24 <--- veth ---> vw<id> 10.251.<x>.2/24

``cut()`` sets the worker's veth end down: both ends lose carrier at once and every packet
between the hosts is dropped silently (no RST, no ICMP), as when a cable is pulled.

Everything started here is stopped by ``teardown()``: the ``Popen`` objects it started,
then every process still inside either namespace (``ip netns pids``), then the veth pair
and both namespaces. It never touches a process or a namespace it did not create.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

__all__ = ["NetnsUnavailableError", "TwoHosts", "unsupported_reason"]

_CMD_TIMEOUT_S = 20.0  # any single `ip` command


class NetnsUnavailableError(RuntimeError):
    """This machine does not let us build the namespaces (the test should skip)."""


def unsupported_reason() -> str | None:
    """Why two network namespaces cannot be built here, or ``None`` when they can be tried."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "network namespaces need root (euid 0)"
    if shutil.which("ip") is None:
        return "the iproute2 `ip` binary is not on PATH"
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["ip", *args], capture_output=True, text=True, timeout=_CMD_TIMEOUT_S, check=False
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"`ip {' '.join(args)}` failed ({proc.returncode}): {proc.stderr}")
    return proc


@dataclass
class Host:
    """One namespace: its name, its veth end and its address."""

    ns: str
    veth: str
    ip: str


@dataclass
class TwoHosts:
    """A head and a worker namespace joined by a veth pair (see the module docstring)."""

    subnet: int = field(default_factory=lambda: 1 + secrets.randbelow(254))
    tag: str = field(default_factory=lambda: secrets.token_hex(3))

    def __post_init__(self) -> None:
        self.head = Host(f"syh-{self.tag}", f"vh{self.tag}", f"10.251.{self.subnet}.1")
        self.worker = Host(f"syw-{self.tag}", f"vw{self.tag}", f"10.251.{self.subnet}.2")
        self._made_ns: list[str] = []
        self._procs: list[tuple[subprocess.Popen[bytes], IO[bytes]]] = []
        self.cut_at: float | None = None  # time.time() of the cut

    # --- building ---------------------------------------------------------------------------

    def create(self) -> None:
        """Build both namespaces and the link.

        Raises:
            NetnsUnavailableError: ``ip netns add`` (or creating the veth pair) is refused.
        """
        for host in (self.head, self.worker):
            proc = _ip("netns", "add", host.ns, check=False)
            if proc.returncode != 0:
                raise NetnsUnavailableError(
                    f"`ip netns add {host.ns}` failed: {proc.stderr.strip() or proc.returncode}"
                )
            self._made_ns.append(host.ns)
        # Both ends are created straight inside their namespaces: nothing appears in ours.
        proc = _ip(
            "link", "add", self.head.veth, "netns", self.head.ns, "type", "veth",
            "peer", "name", self.worker.veth, "netns", self.worker.ns,
            check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            raise NetnsUnavailableError(f"creating a veth pair failed: {proc.stderr.strip()}")
        for host in (self.head, self.worker):
            _ip("-n", host.ns, "link", "set", "lo", "up")
            _ip("-n", host.ns, "addr", "add", f"{host.ip}/24", "dev", host.veth)
            _ip("-n", host.ns, "link", "set", host.veth, "up")
        self._wait_link_up()

    def _wait_link_up(self, timeout: float = 10.0) -> None:
        """Wait until both veth ends report carrier (``LOWER_UP``)."""
        deadline = time.monotonic() + timeout
        while True:
            states = [
                _ip("-n", h.ns, "-o", "link", "show", h.veth).stdout
                for h in (self.head, self.worker)
            ]
            if all("LOWER_UP" in s for s in states):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the veth pair did not come up: {states}")
            time.sleep(0.05)

    # --- processes --------------------------------------------------------------------------

    def spawn(
        self, host: Host, argv: Sequence[str], env: Mapping[str, str], log: Path
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside ``host``'s namespace, stdout and stderr to ``log``."""
        out = open(log, "wb")  # noqa: SIM115 (closed in teardown)
        try:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", host.ns, *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(env),
                cwd=str(log.parent),
            )
        except BaseException:
            out.close()
            raise
        self._procs.append((proc, out))
        return proc

    def pids(self, host: Host) -> list[int]:
        """PIDs of every process inside ``host``'s namespace."""
        proc = _ip("netns", "pids", host.ns, check=False)
        if proc.returncode != 0:
            return []
        return [int(p) for p in proc.stdout.split() if p.strip().isdigit()]

    # --- faults -----------------------------------------------------------------------------

    def cut(self) -> float:
        """Pull the cable: set the worker's veth end down. Returns ``time.time()`` of the cut."""
        _ip("-n", self.worker.ns, "link", "set", self.worker.veth, "down")
        self.cut_at = time.time()
        return self.cut_at

    # --- teardown ---------------------------------------------------------------------------

    def teardown(self) -> list[str]:
        """Stop everything this object started and remove the namespaces.

        Safe to call more than once and after a partial ``create()``. Returns the problems
        met (empty when all went away).
        """
        problems: list[str] = []
        for proc, _ in self._procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        for ns in self._made_ns:
            host = self.head if ns == self.head.ns else self.worker
            for _ in range(50):
                left = self.pids(host)
                if not left:
                    break
                for pid in left:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL)
                time.sleep(0.1)
            else:
                problems.append(f"processes still in {ns}: {self.pids(host)}")
        for proc, out in self._procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                problems.append(f"pid {proc.pid} did not exit")
            out.close()
        self._procs.clear()
        if self._made_ns:
            # Deleting one end deletes the pair; a namespace deletion would too.
            _ip("-n", self.head.ns, "link", "del", self.head.veth, check=False)
        for ns in list(self._made_ns):
            proc = _ip("netns", "del", ns, check=False)
            if proc.returncode != 0:
                problems.append(f"`ip netns del {ns}` failed: {proc.stderr.strip()}")
            else:
                self._made_ns.remove(ns)
        return problems
