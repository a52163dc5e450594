"""RabbitMQ in: a queue consumed with a bounded prefetch, acknowledged at checkpoints.

Messages are acknowledged only once the checkpoint that covers them is durable. A crash
between that checkpoint's commit and its acknowledgements makes RabbitMQ redeliver them;
the checkpoint records the ids of the messages it covers that were not yet acknowledged,
and a redelivered message with one of those ids is acknowledged and dropped, never applied
twice (as Flink's RabbitMQ source does with correlation ids). A message's id is its AMQP
``message_id``: exactly once needs publishers to set one. A message without one cannot be
told from an identical twin, so it is never dropped: redelivered, it is applied again (at
least once), logged and counted in ``redelivered_without_id``.

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
        # Every message whose effect is in the shards' state and which RabbitMQ may still
        # bring again is counted (by id, with multiplicity) in exactly one of these:
        # delivered on this channel in this epoch, acknowledged at the checkpoint:
        self._pending: Counter[str] = Counter()
        # read in this epoch, its delivery voided by a lost connection (it comes again):
        self._epoch_expected: Counter[str] = Counter()
        # in a committed checkpoint, not known to be acknowledged (it may come again):
        self._expected: Counter[str] = Counter()
        # acknowledged, the acknowledgement not yet confirmed by a round trip:
        self._acked: Counter[str] = Counter()
        # A redelivery takes one count out (a twin body without a message id then counts as
        # new), so nothing is dropped that was not applied.
        self._unacked = 0  # deliveries on this channel not acknowledged: at most prefetch
        self._epoch_size = 0  # messages read in this epoch
        self._last_tag = 0
        #: Messages that came again after a crash or a lost connection and were dropped
        #: because their effect was already in the state.
        self.duplicates_dropped = 0
        #: Redelivered messages without a message_id, applied again (at least once).
        self.redelivered_without_id = 0
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
        # Deliveries of the lost channel come again; acknowledgements not confirmed may
        # have been lost.
        self._epoch_expected += self._pending
        self._expected += self._acked
        self._pending, self._acked, self._unacked = Counter(), Counter(), 0
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
        self._expected = Counter(position.get("unacked_ids", [])) if position else Counter()
        self._epoch_expected, self._pending, self._acked = Counter(), Counter(), Counter()
        self._epoch_size = 0

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
                # Nothing more right now.
                quiet = time.monotonic() - self._last_message
                if (
                    not out
                    and not self._epoch_size
                    and self.idle_timeout_s is not None
                    and quiet >= self.idle_timeout_s
                ):
                    return None
                break
            self._last_message = time.monotonic()
            mid = props.message_id
            tag = method.delivery_tag
            if mid is None:
                # No id: nothing tells a redelivery from a twin, so it is applied (again):
                # at least once. Exactly once needs publishers to set message_id.
                if method.redelivered:
                    self.redelivered_without_id += 1
                    if self.redelivered_without_id == 1:
                        _log.warning(
                            "%s redelivered a message without message_id: it is applied "
                            "again (at least once); set message_id for exactly once",
                            self._where(),
                        )
                self._unacked += 1
                self._epoch_size += 1
                self._last_tag = tag
                out.append(decode_record(self._decode, body, hashlib.sha256(body).hexdigest()))
                continue
            if method.redelivered and self._epoch_expected[mid] > 0:
                # Read in this epoch before the connection was lost: its effect is in the
                # state; this delivery is acknowledged with the epoch.
                self._epoch_expected[mid] -= 1
                self._pending[mid] += 1
                self._unacked += 1
                self._last_tag = tag
                self.duplicates_dropped += 1
                continue
            if method.redelivered and self._expected[mid] > 0:
                # In a committed checkpoint: acknowledged now, alone (a later multiple-ack
                # skips it), so a window of duplicates never stalls.
                self._expected[mid] -= 1
                self.duplicates_dropped += 1
                try:
                    self._channel.basic_ack(delivery_tag=tag)
                    self._acked[mid] += 1
                except self._pika.exceptions.AMQPError as exc:
                    self._expected[mid] += 1  # it comes again
                    self._reconnect(exc)
                    break
                continue
            self._pending[mid] += 1
            self._unacked += 1
            self._epoch_size += 1
            self._last_tag = tag
            out.append(decode_record(self._decode, body, mid))
        if self._acked and self._unacked == 0:
            self._confirm()  # only duplicates were acknowledged since the last checkpoint
        return out

    def _confirm(self) -> None:
        """Make sure RabbitMQ has processed the acknowledgements sent so far: a channel's
        frames are handled in order, so the answer to a synchronous request after them says
        so. A lost connection instead keeps their ids expected (and connects again)."""
        try:
            self._channel.basic_qos(prefetch_count=self.prefetch)
        except self._pika.exceptions.AMQPError as exc:
            self._reconnect(exc)
            return
        self._acked = Counter()

    def position(self) -> Any:
        # Everything RabbitMQ may still bring whose effect this checkpoint holds.
        maybe_again = self._pending + self._epoch_expected + self._expected + self._acked
        return {"unacked_ids": list(maybe_again.elements())}

    def ack(self, position: Any) -> None:
        # The epoch is committed: its messages are expected (not pending) from now on.
        self._expected += self._epoch_expected
        self._acked += self._pending
        self._epoch_expected, self._pending = Counter(), Counter()
        self._unacked = self._epoch_size = 0
        try:
            if self._last_tag:
                self._channel.basic_ack(delivery_tag=self._last_tag, multiple=True)
                self._last_tag = 0  # acknowledging a tag twice closes the channel
        except self._pika.exceptions.AMQPError as exc:
            self._reconnect(exc)  # the committed messages come again, and are dropped
            return
        self._confirm()

    def close(self) -> None:
        try:
            self._channel.cancel()
            self._conn.close()
        except Exception:
            pass
