"""The real servers this machine runs for tests, and what a test does when one is down.

A test that needs a server calls :func:`require`: it skips when nothing answers, unless
``SHARDYARD_REQUIRE_SERVICES=1`` (set by ``.ci/run``), where an unreachable server fails it.
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import pytest

POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
MARIADB_URL = "mysql+pymysql://root@127.0.0.1:3306/test"

SERVERS = {
    "postgresql": ("127.0.0.1", 5432),
    "mariadb": ("127.0.0.1", 3306),
    "rabbitmq": ("127.0.0.1", 5672),
    "redis": ("127.0.0.1", 6379),
    "nats": ("127.0.0.1", 4222),
}


def require(name: str) -> None:
    """Skip (or, under ``SHARDYARD_REQUIRE_SERVICES=1``, fail) unless ``name`` answers."""
    host, port = SERVERS[name]
    try:
        with socket.create_connection((host, port), timeout=2):
            return
    except OSError as exc:
        why = f"{name} is not reachable at {host}:{port} ({exc})"
    if os.environ.get("SHARDYARD_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{why}; SHARDYARD_REQUIRE_SERVICES=1 makes that a failure")
    pytest.skip(why)


def store_url(kind: str, tmp_path: Path) -> str:
    """A checkpoint store URL of ``kind`` (memory, file, sqlite, postgresql, mariadb)."""
    if kind == "memory":
        return f"memory://{uuid.uuid4().hex}"
    if kind == "file":
        return f"file://{tmp_path / 'ckpt'}"
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'ckpt.db'}"
    require(kind)
    return POSTGRES_URL if kind == "postgresql" else MARIADB_URL
