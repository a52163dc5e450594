"""Snapshot stores, chosen by URL: where a pool's checkpoints live.

* ``memory`` / ``memory://name``: this process's memory (:mod:`.memory`);
* ``file:///dir``: files, written atomically (:mod:`.files`);
* ``sqlite:///path.db``, ``postgresql+psycopg://user@host/db``,
  ``mysql+pymysql://user@host/db``: SQL through SQLAlchemy Core (:mod:`.sql`; the
  ``postgres`` / ``mysql`` extras bring the drivers).

A checkpoint is complete only when every shard's part is stored; recovery only ever uses
complete ones (:mod:`.base`).

Example:
    >>> store = open_store("memory://example")
    >>> store.put_part("counts", 1, 0, b"state of shard 0")
    >>> store.commit("counts", 1, num_shards=1)
    >>> store.latest("counts").checkpoint_id, store.get_part("counts", 1, 0)
    (1, b'state of shard 0')
"""

from __future__ import annotations

from shardyard.state.base import (
    Checkpoint,
    IncompleteCheckpointError,
    StateStore,
    StateStoreError,
)
from shardyard.state.files import FileStore
from shardyard.state.memory import MemoryStore

__all__ = [
    "Checkpoint",
    "FileStore",
    "IncompleteCheckpointError",
    "MemoryStore",
    "StateStore",
    "StateStoreError",
    "open_store",
]


def open_store(url: str) -> StateStore:
    """The store a URL names.

    Raises:
        StateStoreError: the URL's scheme is unknown, or its server cannot be used (the
            message names the server and the cause).
    """
    if url == "memory" or url.startswith("memory://"):
        return MemoryStore(url.removeprefix("memory").removeprefix("://"))
    if url.startswith("file://"):
        return FileStore(url.removeprefix("file://"))
    scheme = url.split(":", 1)[0]
    if scheme.split("+", 1)[0] in ("sqlite", "postgresql", "mysql", "mariadb"):
        from shardyard.state.sql import SqlStore

        return SqlStore(url)
    raise StateStoreError(
        f"unknown checkpoint store {url!r}: use memory, file:///dir, sqlite:///path.db, "
        "postgresql+psycopg://user@host/db or mysql+pymysql://user@host/db"
    )
