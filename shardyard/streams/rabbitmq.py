"""RabbitMQ in: a queue consumed with a bounded prefetch, acknowledged at checkpoints.

Messages are acknowledged only once the checkpoint that covers them is durable. A crash
between that checkpoint's commit and its acknowledgements makes RabbitMQ redeliver them;
the checkpoint records the ids of the messages it covers that were not yet acknowledged,
and a redelivered message with one of those ids is acknowledged and dropped, never applied
twice (as Flink's RabbitMQ source does with correlation ids). A message's id is its AMQP
``message_id`` (publishers should set one); without it, the SHA-256 of its body.

Bodies are decoded by the named codec (``json`` or ``text``), never unpickled.

Example:
    >>> src = RabbitMQSource("amqp://guest:guest@127.0.0.1:5672/", "events")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any, Literal

from shardyard.errors import ShardyardError
from shardyard.streams.base import Record, Source

__all__ = ["RabbitMQSource", "SourceError"]


class SourceError(ShardyardError, RuntimeError):
    """A source's server cannot be used; the message names the server and the cause."""


class RabbitMQSource(Source):
    """The messages of one queue, in delivery order.

    Args:
        url: ``amqp://user:password@host:port/vhost``.
        queue: the queue (it must exist: a missing queue is an error, not a new queue).
        codec: ``"json"`` or ``"text"``.
        prefetch: unacknowledged messages RabbitMQ may hand this consumer (the memory
            bound: a backlog of millions stays in the broker).
        idle_timeout_s: end the stream once no message came for this long (``None``: run
            until stopped), e.g. to drain a queue.
    """

    def __init__(
        self,
        url: str,
        queue: str,
        codec: Literal["json", "text"] = "json",
        prefetch: int = 2000,
        idle_timeout_s: float | None = None,
    ) -> None:
        try:
            import pika
        except ImportError:  # pragma: no cover - the extra is missing
            raise SourceError(
                'RabbitMQ sources need pika: pip install "shardyard[rabbitmq]"'
            ) from None
        self._pika = pika
        self.url = url
        self.queue = queue
        self.codec = codec
        self.prefetch = prefetch
        self.idle_timeout_s = idle_timeout_s
        self._last_message = time.monotonic()
        self._seen_before: set[str] = set()  # ids the restored checkpoint covers, unacked
        self._epoch_ids: list[str] = []  # ids read since the last acknowledged checkpoint
        self._last_tag = 0
        #: Redelivered messages dropped because the restored checkpoint already covers them.
        self.duplicates_dropped = 0
        self._connect()

    def _where(self) -> str:
        p = self._pika.URLParameters(self.url)
        user = p.credentials.username
        return f"RabbitMQ at {p.host}:{p.port} (vhost {p.virtual_host!r}, user {user!r})"

    def _connect(self) -> None:
        pika = self._pika
        try:
            self._conn = pika.BlockingConnection(pika.URLParameters(self.url))
            self._channel = self._conn.channel()
            self._channel.queue_declare(self.queue, passive=True)
            self._channel.basic_qos(prefetch_count=self.prefetch)
        except pika.exceptions.ChannelClosedByBroker as exc:
            raise SourceError(
                f"queue {self.queue!r} on {self._where()}: {exc.reply_text}"
            ) from None
        except pika.exceptions.ProbableAuthenticationError as exc:
            raise SourceError(f"{self._where()} refused the login: {exc}") from None
        except pika.exceptions.AMQPConnectionError as exc:
            raise SourceError(f"cannot connect to {self._where()}: {exc!r}") from None
        self._consumer = self._channel.consume(self.queue, inactivity_timeout=0.05)

    def restore(self, position: Any) -> None:
        self._seen_before = set(position.get("unacked_ids", [])) if position else set()

    def read(self, max_records: int) -> list[Record] | None:
        out: list[Record] = []
        while len(out) < max_records:
            method, props, body = next(self._consumer)
            if method is None:
                # Nothing more right now (or the prefetch window is full: acked at the
                # checkpoint the job takes when a read comes back empty).
                quiet = time.monotonic() - self._last_message
                if (
                    not out
                    and not self._epoch_ids
                    and self.idle_timeout_s is not None
                    and quiet >= self.idle_timeout_s
                ):
                    return None
                break
            self._last_message = time.monotonic()
            mid = props.message_id or hashlib.sha256(body).hexdigest()
            if method.redelivered and mid in self._seen_before:
                # Its effect is in the restored checkpoint: acknowledge it now, alone (a
                # later multiple-ack skips it), so a window of duplicates never stalls.
                self._channel.basic_ack(delivery_tag=method.delivery_tag)
                self.duplicates_dropped += 1
                continue
            self._last_tag = method.delivery_tag
            self._epoch_ids.append(mid)
            text = body.decode("utf-8")
            value = json.loads(text) if self.codec == "json" else text
            out.append(Record(value, mid))
        return out

    def position(self) -> Any:
        return {"unacked_ids": list(self._epoch_ids)}

    def ack(self, position: Any) -> None:
        if self._last_tag:
            self._channel.basic_ack(delivery_tag=self._last_tag, multiple=True)
        self._epoch_ids = []
        self._seen_before = set()

    def close(self) -> None:
        try:
            self._channel.cancel()
            self._conn.close()
        except Exception:
            pass
