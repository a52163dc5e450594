"""What a streaming job reads from and writes to.

A :class:`Source` hands out records in order and can go back to a position it reported
(kept in each checkpoint); :meth:`Source.ack` tells it a checkpoint covering everything up
to a position is durable (a broker source acknowledges its messages then). A :class:`Sink`
writes each checkpoint's outputs under that checkpoint's id, so writing the same id again
(after a crash before the commit) replaces, never adds: effectively once.

Records from outside the cluster are decoded by a codec the source names (see
:mod:`shardyard.streams.codecs`), never unpickled; one that fails to decode is handed on
with its error, to go to the job's dead letters.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

__all__ = ["Record", "Sink", "Source"]


@dataclass(frozen=True)
class Record:
    """One record of a source.

    Attributes:
        value: the decoded value (what the handler gets).
        id: an identifier unique within the source (for deduplication), or ``None``.
        payload: the message as it came, when the source has one (a dead letter keeps it).
        error: why it could not be decoded (``None``: it was); such a record goes to the
            job's dead letters, not to the handler.
    """

    value: Any
    id: str | None = None
    payload: bytes | None = None
    error: str | None = None


class Source(ABC):
    """Records in order, resumable from a position."""

    @abstractmethod
    def restore(self, position: Any) -> None:
        """Continue after ``position`` (from :meth:`position`; ``None``: the beginning)."""

    @abstractmethod
    def read(self, max_records: int) -> list[Record] | None:
        """Up to ``max_records`` records; ``[]`` when none is ready yet; ``None`` at the end."""

    @abstractmethod
    def position(self) -> Any:
        """Where the records read so far end (JSON-able)."""

    def ack(self, position: Any) -> None:  # noqa: B027 - sources without acks
        """Everything up to ``position`` is in a durable checkpoint."""

    def close(self) -> None:  # noqa: B027 - sources without resources
        """Release what the source holds."""


class Sink(ABC):
    """Writes outputs per checkpoint id, replacing a previous write of the same id."""

    @abstractmethod
    def write(self, checkpoint_id: int, outputs: list[Any]) -> None:
        """Make ``outputs`` durable as checkpoint ``checkpoint_id``'s (replacing any)."""

    def close(self) -> None:  # noqa: B027 - sinks without resources
        """Release what the sink holds."""
