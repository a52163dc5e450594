"""The one error hierarchy of shardyard.

Every error shardyard raises on purpose derives from :class:`ShardyardError`, so
``except ShardyardError`` catches all of them. Where a built-in error type is the
natural one (``TypeError`` for a bad key type, ``ValueError`` for an unknown name),
the subclass inherits from it too, so existing ``except TypeError`` code keeps working.

Invalid configuration raises ``pydantic.ValidationError`` (from the models in
:mod:`shardyard.config`), which names the offending field.

Example:
    >>> from shardyard.errors import ShardyardError, UnknownStrategyError
    >>> issubclass(UnknownStrategyError, ShardyardError)
    True
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ActorLostError",
    "ClusterConnectionError",
    "ConfigError",
    "InputError",
    "PoisonItemError",
    "PoolClosedError",
    "SerializationError",
    "ShardFailedError",
    "ShardyardError",
    "SourceError",
    "StartTimeoutError",
    "TaskError",
    "UnknownStrategyError",
    "UnsupportedKeyError",
]


class ShardyardError(Exception):
    """Raised for every error shardyard reports on purpose (the common base)."""


class UnknownStrategyError(ShardyardError, ValueError):
    """Raised when a strategy or policy name is not in its registry; lists the valid names."""

    def __init__(self, kind: str, name: str, valid: list[str]) -> None:
        self.kind = kind
        self.name = name
        self.valid = sorted(valid)
        super().__init__(f"unknown {kind} {name!r}; valid names are: {', '.join(self.valid)}")


class UnsupportedKeyError(ShardyardError, TypeError):
    """Raised when a key has a type that cannot be hashed stably (float, dict, None, ...)."""

    def __init__(self, type_name: str, position: int) -> None:
        self.type_name = type_name
        self.position = position
        super().__init__(
            f"key at position {position} has unsupported type {type_name!r}; "
            "keys must be integers, str or bytes"
        )


class SerializationError(ShardyardError, TypeError):
    """Raised at submission when a handler or an item cannot be serialised for Ray."""


class PoolClosedError(ShardyardError, RuntimeError):
    """Raised when work is submitted to a pool that has been closed."""


class ActorLostError(ShardyardError, RuntimeError):
    """Raised when a shard actor died and its work could not be recovered within the retries."""


class TaskError(ShardyardError):
    """Raised when the user's handler failed on an item; names the shard and key.

    Attributes:
        shard_id: the logical shard whose batch failed.
        key: the key of the failed item (``None`` for keyless work).
        cause: the original exception object, when it could be transported.
        remote_traceback: the formatted traceback from the actor process.
    """

    def __init__(
        self,
        shard_id: int,
        key: Any,
        cause: BaseException | None,
        remote_traceback: str,
    ) -> None:
        self.shard_id = shard_id
        self.key = key
        self.cause = cause
        self.remote_traceback = remote_traceback
        if cause is not None:
            what = f"{type(cause).__name__}: {cause}"
        else:  # the exception did not travel: its last traceback line names it
            lines = [ln for ln in remote_traceback.strip().splitlines() if ln.strip()]
            what = lines[-1] if lines else "handler failed"
        super().__init__(
            f"handler failed on shard {shard_id}, key {key!r}: {what}\n"
            f"--- original traceback (shard actor) ---\n{remote_traceback}"
        )
        if cause is not None:
            self.__cause__ = cause

    def __reduce__(self) -> tuple[Any, ...]:
        return (TaskError, (self.shard_id, self.key, self.cause, self.remote_traceback))


class ConfigError(ShardyardError, ValueError):
    """Raised when a pool's settings do not fit together.

    For example a stateful ``Shard`` with a strategy that may send one key to two shards, or
    strategy options that do not fit the number of shards.
    """


class InputError(ShardyardError):
    """Raised when reading or routing the input failed part-way.

    The items before it were processed: every item handed over before the failure ran to the
    end (none was abandoned in flight), and nothing from ``position`` on was submitted.

    Attributes:
        position: the absolute input index of the first item not submitted.
        submitted: how many items were handed over before the failure (all of them finished).
        cause: the original exception (also ``__cause__``): the input iterator's, the keys
            iterator's or key function's error, or an ``UnsupportedKeyError`` naming the
            absolute position of the bad key.
        partial: for ``map``, the outputs of the submitted items in input order (an item that
            itself failed holds its ``TaskError``), as ``map`` would return them; ``None`` for
            the streaming calls, which yielded those outputs before raising.
        errors: ``(position, TaskError)`` of the submitted items that failed, by position.

    Example:
        >>> e = InputError(3, 3, KeyError("k"))
        >>> e.position, e.submitted, type(e.__cause__).__name__
        (3, 3, 'KeyError')
    """

    def __init__(
        self,
        position: int,
        submitted: int,
        cause: BaseException,
        partial: Any = None,
        errors: list[tuple[int, BaseException]] | None = None,
    ) -> None:
        self.position = position
        self.submitted = submitted
        self.cause = cause
        self.partial = partial
        self.errors = list(errors or [])
        failed = f", {len(self.errors)} of them with errors" if self.errors else ""
        where = ": see .partial" if partial is not None else " and their outputs yielded"
        super().__init__(
            f"input failed at position {position} ({type(cause).__name__}: {cause}); "
            f"the {submitted} items before it were processed{failed}{where}"
        )
        self.__cause__ = cause

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            InputError,
            (self.position, self.submitted, self.cause, self.partial, self.errors),
        )


class PoisonItemError(TaskError):
    """Raised for an item whose handler kills its actor process, even when run alone.

    After a crash, the batches that were in flight are run again alone, then split; an
    item that still takes its process down when it runs by itself fails with this error
    (like a dead-letter after ``maxReceiveCount`` deliveries), and the other items go on.

    Attributes:
        deaths: how many actor deaths the item was in flight for.
    """

    def __init__(self, shard_id: int, key: Any, deaths: int) -> None:
        why = (
            f"the shard actor's process died {deaths} times while this item was in flight, "
            "twice while it ran alone: the handler kills its process on this item "
            "(os._exit, a segfault, running out of memory), or its process was killed from "
            "outside each time"
        )
        super().__init__(shard_id, key, None, why)
        self.deaths = deaths
        self.args = (f"poison item on shard {shard_id}, key {key!r}: {why}",)

    def __str__(self) -> str:
        return str(self.args[0])

    def __reduce__(self) -> tuple[Any, ...]:
        return (PoisonItemError, (self.shard_id, self.key, self.deaths))


class ShardFailedError(ShardyardError, RuntimeError):
    """Raised for the items of a shard that cannot go on (its setup, restore or snapshot failed).

    Every unfinished item of the shard, and every later one, ends with this error.

    Attributes:
        shard_id: the shard.
        reason: what went wrong.
        remote_traceback: the traceback from the actor, when there is one.
    """

    def __init__(self, shard_id: int, reason: str, remote_traceback: str = "") -> None:
        self.shard_id = shard_id
        self.reason = reason
        self.remote_traceback = remote_traceback
        tb = ""
        if remote_traceback:
            tb = f"\n--- original traceback (shard actor) ---\n{remote_traceback}"
        super().__init__(f"shard {shard_id} failed: {reason}{tb}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (ShardFailedError, (self.shard_id, self.reason, self.remote_traceback))


class StartTimeoutError(ShardyardError, TimeoutError):
    """Raised when a pool's actors could not all start (be scheduled and set up) in time."""


class ClusterConnectionError(ShardyardError, ConnectionError):
    """Raised when :func:`shardyard.connect` cannot join the cluster it was pointed at.

    Raised within seconds, before Ray's own connection loop starts, with what to do next.

    Attributes:
        address: the address that was tried.
        reason: ``"unreachable"`` (nothing answers there), ``"token_missing"`` (the cluster
            wants Ray's auth token and this process has none), ``"token_rejected"`` (the
            token this process has is not the cluster's), or ``"mismatch"`` (Ray is already
            connected to a different cluster in this process).

    Example:
        >>> err = ClusterConnectionError("10.0.0.5:6379", "unreachable", "no answer")
        >>> err.reason, isinstance(err, ConnectionError)
        ('unreachable', True)
    """

    def __init__(self, address: str, reason: str, message: str) -> None:
        self.address = address
        self.reason = reason
        self.message = message
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (ClusterConnectionError, (self.address, self.reason, self.message))


class SourceError(ShardyardError, RuntimeError):
    """A streaming source's server cannot be used (down, refused the login, no such queue
    or stream); the message names the server and the cause."""
