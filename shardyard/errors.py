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
    "PoolClosedError",
    "SerializationError",
    "ShardyardError",
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
        what = f"{type(cause).__name__}: {cause}" if cause is not None else "handler failed"
        super().__init__(
            f"handler failed on shard {shard_id}, key {key!r}: {what}\n"
            f"--- original traceback (shard actor) ---\n{remote_traceback}"
        )
        if cause is not None:
            self.__cause__ = cause

    def __reduce__(self) -> tuple[Any, ...]:
        return (TaskError, (self.shard_id, self.key, self.cause, self.remote_traceback))
