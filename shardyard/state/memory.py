"""``memory``: checkpoints in this process's memory (gone with it); stores of one name share.

Example:
    >>> from shardyard.state import open_store
    >>> store = open_store("memory://doc")
    >>> store.put_part("p", 1, 0, b"x"); store.commit("p", 1, 1)
    >>> store.latest("p").checkpoint_id
    1
"""

from __future__ import annotations

import threading
from typing import ClassVar

from shardyard.state.base import Checkpoint, IncompleteCheckpointError, StateStore

__all__ = ["MemoryStore"]


class MemoryStore(StateStore):
    """Checkpoints in a dict; every ``MemoryStore`` of one ``name`` sees the same data."""

    _shared: ClassVar[
        dict[str, tuple[dict[tuple[str, int, int], bytes], dict[tuple[str, int], Checkpoint]]]
    ] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, name: str = "") -> None:
        self.url = f"memory://{name}"
        with self._lock:
            self._parts, self._done = self._shared.setdefault(name, ({}, {}))

    def put_part(self, pool: str, checkpoint_id: int, shard_id: int, data: bytes) -> None:
        with self._lock:
            self._parts[(pool, checkpoint_id, shard_id)] = bytes(data)

    def commit(self, pool: str, checkpoint_id: int, num_shards: int, meta: bytes = b"") -> None:
        with self._lock:
            missing = [s for s in range(num_shards) if (pool, checkpoint_id, s) not in self._parts]
            if missing:
                raise IncompleteCheckpointError(
                    f"checkpoint {checkpoint_id} of pool {pool!r} lacks the parts of shards "
                    f"{missing[:10]}: not committed"
                )
            self._done[(pool, checkpoint_id)] = Checkpoint(
                pool, checkpoint_id, num_shards, bytes(meta)
            )

    def latest(self, pool: str) -> Checkpoint | None:
        with self._lock:
            mine = [c for (p, _), c in self._done.items() if p == pool]
        return max(mine, key=lambda c: c.checkpoint_id, default=None)

    def get_part(self, pool: str, checkpoint_id: int, shard_id: int) -> bytes:
        with self._lock:
            data: bytes = self._parts[(pool, checkpoint_id, shard_id)]
            return data

    def prune(self, pool: str, keep: int = 2) -> None:
        with self._lock:
            done = sorted(cid for (p, cid) in self._done if p == pool)
            kept = set(done[-keep:]) if keep > 0 else set()
            newest = done[-1] if done else 0
            for p, cid in list(self._done):
                if p == pool and cid not in kept:
                    del self._done[(p, cid)]
            for p, cid, sid in list(self._parts):
                if p == pool and cid not in kept and cid < newest:
                    del self._parts[(p, cid, sid)]
