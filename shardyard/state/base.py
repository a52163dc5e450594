"""What every snapshot store does: keep shard snapshots by checkpoint, complete or not at all.

A checkpoint of a pool is the set of every shard's snapshot taken at one barrier, plus a
small piece of metadata (the job's position in its sources, message ids, ...). Parts are
written one by one as shards report them; :meth:`StateStore.commit` then marks the
checkpoint complete, and only if every shard's part is there. :meth:`StateStore.latest`
returns the newest complete checkpoint only: one interrupted halfway (a shard whose
snapshot failed, a driver killed mid-write) is never used for recovery.

Checkpoints are numbered per pool name (1, 2, 3, ...); ids only grow.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from shardyard.errors import ShardyardError

__all__ = ["Checkpoint", "IncompleteCheckpointError", "StateStore", "StateStoreError"]


class StateStoreError(ShardyardError, RuntimeError):
    """A snapshot store cannot be reached or used; the message names the server and cause."""


class IncompleteCheckpointError(StateStoreError):
    """A commit found parts missing: the checkpoint is not complete and is not used."""


@dataclass(frozen=True)
class Checkpoint:
    """A complete checkpoint.

    Attributes:
        pool: the pool's name.
        checkpoint_id: its number (grows by one per checkpoint of the pool).
        num_shards: how many shards it covers (each has a part).
        meta: the bytes given to :meth:`StateStore.commit`.
    """

    pool: str
    checkpoint_id: int
    num_shards: int
    meta: bytes


class StateStore(ABC):
    """Keeps checkpoints of pools. Safe to use from one thread at a time per instance."""

    #: The URL it was opened with, passwords hidden.
    url: str = ""

    @abstractmethod
    def put_part(self, pool: str, checkpoint_id: int, shard_id: int, data: bytes) -> None:
        """Store shard ``shard_id``'s snapshot for ``checkpoint_id`` (replacing a retry's)."""

    @abstractmethod
    def commit(self, pool: str, checkpoint_id: int, num_shards: int, meta: bytes = b"") -> None:
        """Mark ``checkpoint_id`` complete.

        Raises:
            IncompleteCheckpointError: a shard in ``range(num_shards)`` has no part.
        """

    @abstractmethod
    def latest(self, pool: str) -> Checkpoint | None:
        """The newest complete checkpoint of ``pool``, or ``None``."""

    @abstractmethod
    def get_part(self, pool: str, checkpoint_id: int, shard_id: int) -> bytes:
        """Shard ``shard_id``'s snapshot in ``checkpoint_id``.

        Raises:
            KeyError: there is none.
        """

    @abstractmethod
    def prune(self, pool: str, keep: int = 2) -> None:
        """Drop all but the newest ``keep`` complete checkpoints of ``pool``, and every
        incomplete one older than the newest complete one."""

    def next_id(self, pool: str) -> int:
        """The id for the pool's next checkpoint."""
        last = self.latest(pool)
        return 1 if last is None else last.checkpoint_id + 1

    def close(self) -> None:  # noqa: B027 - optional for stores without resources
        """Release connections."""

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
