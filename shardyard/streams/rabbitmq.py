"""RabbitMQ in: a queue consumed with a bounded prefetch, acknowledged at checkpoints.

Messages are acknowledged only once the checkpoint that covers them is durable. A crash
between that checkpoint's commit and its acknowledgements makes RabbitMQ redeliver them;
the checkpoint records the ids of the messages it covers that were not yet acknowledged,
and a redelivered message with one of those ids is acknowledged and dropped, never applied
twice (as Flink's RabbitMQ source does with correlation ids). A message's id is its AMQP
``message_id`` (publishers should set one); without it, the SHA-256 of its body.

Bodies are decoded by the named codec (see :mod:`shardyard.streams.codecs`), never
unpickled. A lost connection (the server closed it, or restarted) is made again.

Example:
    >>> src = RabbitMQSource("amqp://guest:guest@127.0.0.1:5672/", "events")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections import Counter
from typing import Any

from shardyard.errors import SourceError
from shardyard.streams.base import Record, Source
from shardyard.streams.codecs import Codec, decode_record, decoder

__all__ = ["RabbitMQSource", "SourceError"]

_log = logging.getLogger("shardyard.streams")


class RabbitMQSource(Source):
    """The messages of one queue, in delivery order.

    Args:
        url: ``amqp://user:password@host:port/vhost``.
        queue: the queue (it must exist: a missing queue is an error, not a new queue).
        codec: how a body is decoded (see :mod:`shardyard.streams.codecs`); a body that
            fails goes to the job's dead letters.
        prefetch: unacknowledged messages RabbitMQ may hand this consumer (the memory
            bound: a backlog of millions stays in the broker).
        idle_timeout_s: end the stream once no message came for this long (``None``: run
            until stopped), e.g. to drain a queue.
        reconnect_timeout_s: for how long a lost connection (the server closed it, or
            restarted) is tried again before the job fails with :class:`SourceError`.

    A lost connection loses nothing: RabbitMQ requeues the messages it had handed out and
    not yet had acknowledged; those whose effect is already in the shards' state (read in
    the current epoch, or covered by a committed checkpoint) are recognised by id when they
    come again and acknowledged with the next checkpoint, never applied twice.
    """

    def __init__(
        self,
        url: str,
        queue: str,
        codec: Codec = "json",
        prefetch: int = 2000,
        idle_timeout_s: float | None = None,
        reconnect_timeout_s: float = 60.0,
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
        self._decode = decoder(codec)
        self.prefetch = prefetch
        self.idle_timeout_s = idle_timeout_s
        self.reconnect_timeout_s = reconnect_timeout_s
        self._last_message = time.monotonic()
        # Ids (with multiplicity) of messages whose effect is in the shards' state (in a
        # committed checkpoint, or read in this epoch) and which RabbitMQ may bring again:
        # their acknowledgement is not confirmed. A redelivery of one is dropped.
        self._applied: Counter[str] = Counter()
        self._epoch: Counter[str] = Counter()  # the ids read in this epoch
        # Ids delivered on this channel that the next multiple-ack covers (a lost
        # connection voids them: RabbitMQ brings them again).
        self._pending: Counter[str] = Counter()
        self._unacked = 0  # deliveries on this channel not acknowledged: at most prefetch
        self._acked: list[str] = []  # duplicates acknowledged alone, not yet confirmed
        self._last_tag = 0
        #: Messages that came again after a crash or a lost connection and were dropped
        #: because their effect was already in the state.
        self.duplicates_dropped = 0
        #: How many times a lost connection was made again.
        self.reconnects = 0
        self._connect()

    def _where(self) -> str:
        p = self._pika.URLParameters(self.url)
        user = p.credentials.username
        return f"RabbitMQ at {p.host}:{p.port} (vhost {p.virtual_host!r}, user {user!r})"

    def _connect(self) -> None:
        pika = self._pika
        params = pika.URLParameters(self.url)
        # Named, so an operator sees in the management UI whose connection it is.
        params.client_properties = {"connection_name": f"shardyard:{self.queue}"}
        try:
            self._conn = pika.BlockingConnection(params)
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
        self._last_tag = 0  # delivery tags start again on a new channel

    def _reconnect(self, cause: BaseException) -> None:
        """Connect again after ``cause`` lost the connection, for up to
        ``reconnect_timeout_s``; what the broker requeues will be recognised."""
        _log.warning("lost %s (%r); connecting again", self._where(), cause)
        with contextlib.suppress(Exception):
            self._conn.close()
        self._acked = []  # those acknowledgements may be lost: keep their ids applied
        self._pending = Counter()
        self._unacked = 0
        deadline = time.monotonic() + self.reconnect_timeout_s
        while True:
            try:
                self._connect()
                break
            except SourceError as exc:
                if time.monotonic() >= deadline:
                    raise SourceError(
                        f"{exc} (lost the connection: {cause!r}; tried again for "
                        f"{self.reconnect_timeout_s:g} s)"
                    ) from None
                time.sleep(1.0)
        self.reconnects += 1

    def restore(self, position: Any) -> None:
        self._applied = Counter(position.get("unacked_ids", [])) if position else Counter()
        self._epoch = Counter()

    def read(self, max_records: int) -> list[Record] | None:
        out: list[Record] = []
        while len(out) < max_records:
            if self._unacked >= self.prefetch:
                break  # nothing more comes before the checkpoint acknowledges the window
            try:
                method, props, body = next(self._consumer)
            except self._pika.exceptions.AMQPError as exc:
                self._reconnect(exc)
                break
            if method is None:
                # Nothing more right now (or the prefetch window is full: acked at the
                # checkpoint the job takes when a read comes back empty).
                quiet = time.monotonic() - self._last_message
                if (
                    not out
                    and not self._epoch
                    and self.idle_timeout_s is not None
                    and quiet >= self.idle_timeout_s
                ):
                    return None
                break
            self._last_message = time.monotonic()
            mid = props.message_id or hashlib.sha256(body).hexdigest()
            if method.redelivered and self._applied[mid] > 0:
                # Its effect is in the state already: never applied twice.
                self.duplicates_dropped += 1
                if self._epoch[mid] > 0:
                    self._last_tag = method.delivery_tag  # acknowledged with its epoch
                    self._pending[mid] += 1
                    self._unacked += 1
                elif self._ack_one(method.delivery_tag):
                    # Covered by a committed checkpoint: acknowledged now, alone (a later
                    # multiple-ack skips it), so a window of duplicates never stalls.
                    self._acked.append(mid)
                continue
            self._last_tag = method.delivery_tag
            self._applied[mid] += 1
            self._epoch[mid] += 1
            self._pending[mid] += 1
            self._unacked += 1
            out.append(decode_record(self._decode, body, mid))
        if self._acked and self._confirm():
            self._applied -= Counter(self._acked)
            self._acked = []
        return out

    def _ack_one(self, tag: int) -> bool:
        try:
            self._channel.basic_ack(delivery_tag=tag)
            return True
        except self._pika.exceptions.AMQPError as exc:
            self._reconnect(exc)  # the message comes again, and is dropped then
            return False

    def _confirm(self) -> bool:
        """Whether RabbitMQ has processed the acknowledgements sent so far: a channel's
        frames are handled in order, so the answer to a synchronous request after them
        says so. ``False``: the connection was lost (and is made again)."""
        try:
            self._channel.basic_qos(prefetch_count=self.prefetch)
            return True
        except self._pika.exceptions.AMQPError as exc:
            self._reconnect(exc)
            return False

    def position(self) -> Any:
        # Everything RabbitMQ may still bring whose effect this checkpoint holds.
        return {"unacked_ids": list(self._applied.elements())}

    def ack(self, position: Any) -> None:
        self._epoch = Counter()
        try:
            if self._last_tag:
                self._channel.basic_ack(delivery_tag=self._last_tag, multiple=True)
                self._last_tag = 0  # acknowledging a tag twice closes the channel
        except self._pika.exceptions.AMQPError as exc:
            self._reconnect(exc)  # the committed messages come again, and are dropped
            return
        # Messages of the epoch read before a lost connection stay applied: they come
        # again, and are dropped then.
        acked, self._pending, self._unacked = self._pending, Counter(), 0
        if self._confirm():
            self._applied -= acked

    def close(self) -> None:
        try:
            self._channel.cancel()
            self._conn.close()
        except Exception:
            pass
